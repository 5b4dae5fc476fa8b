"""Suite-wide settings: tiny CPU work runs fastest on one thread, and a busy machine makes torch's
multi-threaded kernels spin; results do not depend on the thread count of a CPU run. Decoded data is cached in a
temporary folder, never the user's."""
import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    old = os.environ.get("IBPROBE_CACHE")
    os.environ["IBPROBE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("IBPROBE_CACHE", None)
    else:
        os.environ["IBPROBE_CACHE"] = old
