"""Inputs that are legal but almost surely a mistake: exit 0 with one WARNING line each."""

from __future__ import annotations

from pathlib import Path

import pytest

from ooc_ties import MergeOptions, OptionError
from ooc_ties.cli import main
from ooc_ties.synthetic import generate_model
from tests.conftest import TINY


@pytest.fixture(scope="module")
def unrelated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fine-tune of another base (another seed) with the same shapes."""
    _, fts = generate_model(TINY, tmp_path_factory.mktemp("unrelated"), n_finetuned=1, seed=99)
    return fts[0]


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("WARNING")]


def _merge(capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    main(["merge", "-q", *args])
    return _warnings(capsys.readouterr().err)


def test_plain_merge_warns_nothing(
    tiny_models: tuple[Path, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, fts = tiny_models
    assert _merge(capsys, "--base", str(base), *map(str, fts), "-o", str(tmp_path / "o")) == []


def test_the_same_model_twice(
    tiny_models: tuple[Path, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, fts = tiny_models
    lines = _merge(capsys, "--base", str(base), str(fts[0]), str(fts[1]), str(fts[0]), "-o", str(tmp_path / "o"))
    assert len(lines) == 1 and "fine-tuned models 1 and 3" in lines[0] and "the same model given twice" in lines[0]
    assert (tmp_path / "o" / "model.safetensors").is_file()


def test_the_base_as_a_fine_tune(
    tiny_models: tuple[Path, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, fts = tiny_models
    lines = _merge(capsys, "--base", str(base), str(fts[0]), str(base), "-o", str(tmp_path / "o"))
    assert len(lines) == 1 and f"fine-tuned model 2 ({base})" in lines[0] and "task vector is zero" in lines[0]


def test_a_fine_tune_of_another_base(
    tiny_models: tuple[Path, list[Path]], unrelated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, fts = tiny_models
    lines = _merge(capsys, "--base", str(base), str(fts[0]), str(unrelated), "-o", str(tmp_path / "o"))
    assert len(lines) == 1 and f"fine-tuned model 2 ({unrelated})" in lines[0]
    assert "as large as the base itself" in lines[0] and "|tau| / |base| = 1.4" in lines[0]


def test_a_weight_of_zero_warns_also_in_a_dry_run(
    tiny_models: tuple[Path, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, fts = tiny_models
    for extra in (["--dry-run"], ["-o", str(tmp_path / "o")]):
        args = ["--base", str(base), str(fts[0]), str(fts[1]), "--weights", "1,0", "-o", str(tmp_path / "o"), *extra]
        lines = _merge(capsys, *args)
        expected = f"fine-tuned model 2 ({fts[1]}) has weight 0: it does not contribute to the merge"
        assert lines == [f"WARNING ooc_ties.lint: {expected}"]


def test_every_weight_zero_is_an_error(
    tiny_models: tuple[Path, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, fts = tiny_models
    with pytest.raises(SystemExit) as exit_info:
        main(["merge", "--base", str(base), str(fts[0]), str(fts[1]), "--weights", "0,0", "-o", str(tmp_path / "o")])
    assert exit_info.value.code == 1
    assert "weights are all 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    with pytest.raises(OptionError, match="weights are all 0"):
        MergeOptions(weights=(0.0, 1e-50))  # 1e-50 is 0 as a float32


def test_linear_takes_its_base_among_its_models(
    tiny_models: tuple[Path, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """linear has no base: the model giving the layout may be one of the averaged ones, without a warning."""
    base, fts = tiny_models
    assert (
        _merge(capsys, "--method", "linear", "--base", str(base), str(base), str(fts[0]), "-o", str(tmp_path / "o"))
        == []
    )
