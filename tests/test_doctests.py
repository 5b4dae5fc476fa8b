"""The notebook API's examples run: every public function of `ibprobe.__all__` has one `>>>` example, and it passes."""
import doctest
import inspect

import pytest

import ibprobe

FUNCTIONS = [name for name in ibprobe.__all__ if name != "__version__" and inspect.isfunction(getattr(ibprobe, name))]


@pytest.mark.parametrize("name", FUNCTIONS)
def test_the_example_of_each_public_function_runs(name):
    fn = getattr(ibprobe, name)
    tests = doctest.DocTestFinder(recurse=False).find(fn, name, globs=dict(vars(inspect.getmodule(fn))))
    assert tests and tests[0].examples, f"ibprobe.{name} has no >>> example in its docstring"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for t in tests:
        runner.run(t)
    assert runner.summarize(verbose=False).failed == 0, f"the example of ibprobe.{name} fails (see above)"


def test_the_notebook_api_is_listed_and_lazy():
    import subprocess
    import sys
    code = "import sys, ibprobe; print(sorted(m for m in sys.modules if m.startswith(('torch', 'matplotlib'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", "import ibprobe must not import torch or matplotlib"
    assert {"estimate_mi", "paired_mi", "probe_i_yh", "binning_mi", "kde_mi", "kid", "run_preset"} <= set(ibprobe.__all__)
