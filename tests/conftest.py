"""Suite-wide settings: tiny CPU work runs fastest on one thread, and a busy machine makes torch's
multi-threaded kernels spin; results do not depend on the thread count of a CPU run. Decoded data is cached in a
temporary folder, never the user's.

Hypothesis profiles, chosen with `--hypothesis-profile NAME`: "ci" (the default) runs a few hundred examples of the
fuzz suite, the same ones every time, in about two minutes; "long" runs ten times as many, new ones on every run,
to find what "ci" does not (pin each failure it finds as an `@example`). Tests can add lines to the summary printed
at the end of the session with the `session_summary` fixture (the fuzz suite prints its example counts there)."""
import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

torch.set_num_threads(1)

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
          HealthCheck.function_scoped_fixture]
settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True, database=None,
                          suppress_health_check=_QUIET, print_blob=True)
settings.register_profile("long", max_examples=1000, deadline=None, suppress_health_check=_QUIET, print_blob=True)
settings.load_profile("ci")

_SUMMARY = pytest.StashKey[list]()


@pytest.fixture(scope="session")
def session_summary(request) -> list:
    """Lines to print at the end of the session, after the test results."""
    return request.config.stash.setdefault(_SUMMARY, [])


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    lines = config.stash.get(_SUMMARY, [])
    if lines:
        terminalreporter.section("summary", sep="-")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    old = os.environ.get("IBPROBE_CACHE")
    os.environ["IBPROBE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("IBPROBE_CACHE", None)
    else:
        os.environ["IBPROBE_CACHE"] = old
