"""Fixtures shared by the backend tests: one tiny network trained once, analysed in this process one job at a time
(the table every backend must reproduce), with the 2-epoch fits of FLAGS and with 3-epoch fits."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import FIT_3, analyse, trained_copy


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    analyse(out)
    return out


@pytest.fixture(scope="session")
def reference_3_epochs(reference, tmp_path_factory) -> Path:
    out = trained_copy(reference, tmp_path_factory.mktemp("reference3") / "run")
    analyse(out, fit=FIT_3)
    return out
