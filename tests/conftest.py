"""Suite-wide settings: tiny CPU work runs fastest on one thread, and a busy machine makes torch's
multi-threaded kernels spin; results do not depend on the thread count of a CPU run."""
import os

os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

torch.set_num_threads(1)
