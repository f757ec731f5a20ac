"""The Python examples in docs/ run as written (in order, one namespace per page).

The examples make their folders with ``tempfile.mkdtemp()``, as a reader would; here those land in the
test's own ``tmp_path`` (which pytest cleans up), and nothing new may stay in the system's temp dir.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = ["zarr.md", "grid.md"]
TEMP_NAME = re.compile(r"tmp[a-z0-9_]{8}")
"""The names ``tempfile.mkdtemp()`` and its kin give (prefix ``tmp``, eight random characters)."""


def _python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(encoding="utf-8"), flags=re.S | re.M)


def _temp_entries(folder: str) -> set[str]:
    return {name for name in os.listdir(folder) if TEMP_NAME.fullmatch(name)}


@pytest.mark.parametrize("page", PAGES)
def test_examples_run(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = _python_blocks(DOCS / page)
    assert len(blocks) >= 3, f"{page} lost its examples"
    system_temp = tempfile.gettempdir()
    before = _temp_entries(system_temp)
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where mkdtemp() and its kin create things
    monkeypatch.setenv("TMPDIR", str(temp))  # and any child process
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for number, block in enumerate(blocks, 1):
        code = compile(block, f"{page}, example {number}", "exec")
        exec(code, namespace)
    assert any(temp.iterdir()), "the examples no longer use a temporary folder: drop the redirection"
    assert _temp_entries(system_temp) - before == set()


def _column(cells: list[str], k: int, i: int, count: int) -> str:
    """Cell ``k`` for the ``i``-th of ``count`` methods of a row (``a, b`` where they differ)."""
    parts = [p.strip() for p in cells[k].split(",")]
    return parts[i] if len(parts) == count else cells[k]


def test_the_methods_table_states_each_declaration() -> None:
    """docs/methods.md's table of methods says what ``ooc_ties.methods`` declares: every method, its
    sign election, its default normalization, and its parameters (``int8_mask``, which changes nothing,
    aside). A row may hold two methods, with ``a, b`` where they differ."""
    from ooc_ties.methods import METHODS

    text = (DOCS / "methods.md").read_text(encoding="utf-8")
    start = text.index("| method |")
    table = text[start : text.index("\n\n", start)].splitlines()[2:]
    seen = set()
    for row in table:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        names = re.findall(r"`([a-z_]+)`", cells[0].split("(")[0])
        for i, name in enumerate(names):
            method = METHODS[name]
            assert (_column(cells, 2, i, len(names)) == "sum") == method.consensus, (name, cells[2])
            assert (_column(cells, 3, i, len(names)) == "yes") == method.normalize, (name, cells[3])
            documented = set(re.findall(r"`([a-z_0-9]+)`", cells[5]))
            assert documented == {p.name for p in method.parameters} - {"int8_mask"}, (name, cells[5])
            seen.add(name)
    assert seen == set(METHODS)
