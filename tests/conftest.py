import os
import pathlib

import pytest

os.environ.setdefault("SVT_LOG", "1")  # the AV1 encoder's banner, off


@pytest.fixture(autouse=True)
def _run_in_a_temporary_directory(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """trial's mktemp() is relative to the working directory: not in the tree."""
    monkeypatch.chdir(tmp_path)
