import sys

from ibprobe.cli import main

sys.exit(main())
