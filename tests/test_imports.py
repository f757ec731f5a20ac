"""What importing the package costs, and what it gives: the public names, loaded on first use."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import ooc_ties
from ooc_ties._version import __version__

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def _imported_after(statement: str) -> set[str]:
    """The heavy modules a fresh interpreter has imported after running ``statement``."""
    heavy = ["numba", "numpy", "zarr", "llvmlite"]
    code = f"import sys\n{statement}\nprint(' '.join(m for m in {heavy!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


@pytest.mark.parametrize(
    "statement", ["import ooc_ties.errors", "import ooc_ties", "from ooc_ties import OocTiesError, __version__"]
)
def test_errors_and_the_package_import_without_numba(statement: str) -> None:
    assert _imported_after(statement) == set()


def test_the_engine_imports_numba_when_asked_for() -> None:
    # the check above can fail: the same probe sees Numba once a name that needs it is used
    assert {"numba", "numpy"} <= _imported_after("from ooc_ties import merge")


def test_every_public_name_resolves() -> None:
    for name in ooc_ties.__all__:
        assert getattr(ooc_ties, name) is not None, name
    assert set(ooc_ties.__all__) <= set(dir(ooc_ties))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = ooc_ties.nothing  # type: ignore[attr-defined]


def test_functions_named_like_their_modules_stay_functions() -> None:
    """``ooc_ties.merge`` and ``ooc_ties.convert`` are functions, even after their modules are imported."""
    import ooc_ties.convert
    import ooc_ties.merge
    from ooc_ties import convert, merge

    assert callable(merge) and merge.__module__ == "ooc_ties.merge"
    assert callable(convert) and convert.__module__ == "ooc_ties.convert"
    assert ooc_ties.merge is merge and sys.modules["ooc_ties.merge"].merge is merge
    statement = "import ooc_ties.merge, ooc_ties.convert\nfrom ooc_ties import merge, convert\nprint(merge, convert)"
    done = subprocess.run([sys.executable, "-c", statement], capture_output=True, text=True, check=True)
    assert done.stdout.startswith("<function merge") and "<function convert" in done.stdout


def test_open_zarr_is_public() -> None:
    from ooc_ties.io.zarr_view import open_zarr

    assert ooc_ties.open_zarr is open_zarr


def test_one_version() -> None:
    declared = re.search(r'^version = "([^"]+)"$', PYPROJECT.read_text(encoding="utf-8"), flags=re.M)
    assert declared is not None
    assert declared.group(1) == __version__ == ooc_ties.__version__
