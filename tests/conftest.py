import pathlib

import pytest


@pytest.fixture(autouse=True)
def _run_in_a_temporary_directory(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """trial's mktemp() is relative to the working directory: not in the tree."""
    monkeypatch.chdir(tmp_path)
