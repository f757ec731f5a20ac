"""Input identity: saved thresholds, resumes and finished outputs are refused for other inputs.

Models generated in one go share names, sizes and (on coarse clocks, or after ``tar``/``rsync -a``)
modification times; each test below gives its inputs equal dates on purpose, so only a stronger
identity than name + size + date can tell them apart (these tests fail on a name/size/date digest).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from ooc_ties import PRESETS, IncompatibleCheckpointsError, OptionError, Resources, Thresholds, merge
from ooc_ties.cli import main
from ooc_ties.identity import FileIdentity, InputsIdentity, SourceIdentity
from ooc_ties.io.checkpoint import Checkpoint
from ooc_ties.synthetic import generate_model
from tests.conftest import TINY, tree_digest


@pytest.fixture(scope="module")
def same_dates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A base and three fine-tunes of one shape whose files all carry the same modification time."""
    base, fts = generate_model(TINY, tmp_path_factory.mktemp("same-dates"), n_finetuned=3, seed=7)
    stamp = 1_700_000_000 * 10**9
    for folder in (base, *fts):
        for path in folder.iterdir():
            os.utime(path, ns=(stamp, stamp))
    return base, fts


def _names_sizes_dates(folder: Path) -> list[tuple[str, int, int]]:
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())]


def test_fixture_models_agree_in_name_size_and_date(same_dates: tuple[Path, list[Path]]) -> None:
    _, fts = same_dates
    assert _names_sizes_dates(fts[0]) == _names_sizes_dates(fts[1]) == _names_sizes_dates(fts[2])


def test_thresholds_from_other_fine_tunes_are_refused_naming_the_file(
    same_dates: tuple[Path, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, (ft1, ft2, ft3) = same_dates
    saved = tmp_path / "th.json"
    main(
        [
            "merge",
            "-q",
            "--base",
            str(base),
            str(ft1),
            str(ft2),
            "-o",
            str(tmp_path / "a"),
            "--save-thresholds",
            str(saved),
        ]
    )
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "merge",
                "-q",
                "--base",
                str(base),
                str(ft1),
                str(ft3),
                "-o",
                str(tmp_path / "b"),
                "--thresholds",
                str(saved),
            ]
        )
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "fine-tuned model 2" in err
    assert str(ft3 / "model.safetensors") in err and str(ft2 / "model.safetensors") in err
    assert not (tmp_path / "b").exists()


def test_resume_onto_a_finished_merge_of_other_inputs_is_refused(
    same_dates: tuple[Path, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, (ft1, ft2, ft3) = same_dates
    out = tmp_path / "out"
    main(["merge", "-q", "--base", str(base), str(ft1), str(ft2), "-o", str(out)])
    before = tree_digest(out)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["merge", "--base", str(base), str(ft2), str(ft3), "-o", str(out), "--resume"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "resumed" not in err and "fine-tuned model 1" in err and str(ft2 / "model.safetensors") in err
    assert tree_digest(out) == before
    # the same merge again is recognised as finished
    main(["merge", "-q", "--base", str(base), str(ft1), str(ft2), "-o", str(out), "--resume"])
    assert tree_digest(out) == before


def test_a_file_rewritten_in_place_with_its_old_size_and_date_is_refused(
    same_dates: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    base, (ft1, ft2, ft3) = same_dates
    inputs = tmp_path / "inputs"
    for folder in (base, ft1, ft2):
        shutil.copytree(folder, inputs / folder.name, copy_function=shutil.copy2)
    saved = tmp_path / "th.json"
    result = merge(inputs / "base", [inputs / "ft1", inputs / "ft2"], tmp_path / "a", PRESETS["paper"])
    result.thresholds.save(saved)
    target = inputs / "ft2" / "model.safetensors"
    stat = target.stat()
    with open(target, "r+b") as f:  # in place: same inode, same size, then the old date back
        f.write((ft3 / "model.safetensors").read_bytes())
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (target.stat().st_size, target.stat().st_mtime_ns, target.stat().st_ino) == (
        stat.st_size,
        stat.st_mtime_ns,
        stat.st_ino,
    )
    with pytest.raises(OptionError, match=r"fine-tuned model 2 .*model\.safetensors changed since \(content differs\)"):
        merge(
            inputs / "base",
            [inputs / "ft1", inputs / "ft2"],
            tmp_path / "b",
            PRESETS["paper"],
            thresholds=Thresholds.load(saved),
        )


def test_a_moved_model_is_another_input(same_dates: tuple[Path, list[Path]], tmp_path: Path) -> None:
    _, (ft1, *_) = same_dates
    copy = tmp_path / "ft1-copy"
    shutil.copytree(ft1, copy, copy_function=shutil.copy2)
    with Checkpoint(ft1) as a, Checkpoint(copy) as b:
        assert a.identity().content == b.identity().content  # the same bytes ...
        why = InputsIdentity((a.identity(),)).mismatch(InputsIdentity((b.identity(),)))
    assert why is not None and str(copy) in why  # ... but another file


def test_identity_reads_a_few_pages_not_the_file(tmp_path: Path) -> None:
    """The digest samples the head, 16 spread pages and the tail: a change elsewhere is not seen (the
    inode, date and pass 2's kept counts catch those), a change in a sampled page is."""
    path = tmp_path / "blob"
    data = np.random.default_rng(0).integers(0, 256, 1 << 22, dtype=np.uint8)
    path.write_bytes(data.tobytes())
    first = FileIdentity.of(path)
    data[-1] ^= 1  # the last page is sampled
    path.write_bytes(data.tobytes())
    assert FileIdentity.of(path).digest != first.digest
    data[-1] ^= 1
    data[100_000] ^= 1  # between the head (64 KiB) and the first sampled page
    path.write_bytes(data.tobytes())
    assert FileIdentity.of(path).digest == first.digest


def test_identity_round_trips_through_json(same_dates: tuple[Path, list[Path]]) -> None:
    base, fts = same_dates
    with Checkpoint(base) as b, Checkpoint(fts[0]) as f:
        identity = InputsIdentity((b.identity(), f.identity()))
    again = InputsIdentity.from_json(json.loads(json.dumps(identity.to_json())))
    assert again == identity and again.mismatch(identity) is None
    assert isinstance(again.sources[0], SourceIdentity)


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    with Checkpoint(folder) as checkpoint:
        return {name: np.array(checkpoint.read(name)).reshape(checkpoint.info(name).shape) for name in checkpoint.names}


@pytest.mark.parametrize(
    ("preset", "refused"),
    [
        # no sign vote in pass 1: pass 2 counts every block, against the exact totals of each tensor
        ("mergekit", r"<model 2>: the merge kept [\d,]+ values of tensor '.*' where pass 1 counted [\d,]+"),
        # a sign-vote sample: pass 2 counts the same sample blocks only
        ("paper", r"<model 2>: the merge kept [\d,]+ values of the sample blocks of the model where pass 1 counted"),
    ],
)
def test_kept_counts_catch_other_inputs_without_an_identity(
    same_dates: tuple[Path, list[Path]], tmp_path: Path, caplog: pytest.LogCaptureFixture, preset: str, refused: str
) -> None:
    """In-memory inputs have no identity: thresholds computed for ft2 and used with ft3 are caught by
    pass 2's kept counts, and nothing is published."""
    base, (ft1, ft2, ft3) = same_dates
    options = PRESETS[preset]
    given = merge(base, [ft1, ft2], tmp_path / "a", options, Resources(max_block_elements=4096)).thresholds

    def bf16(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import ml_dtypes

        return {k: v.view(ml_dtypes.bfloat16) for k, v in arrays.items()}

    models = [bf16(_arrays(p)) for p in (base, ft1, ft3)]
    resources = Resources(max_block_elements=4096)  # the grid the thresholds' samples were counted on
    with pytest.raises(IncompatibleCheckpointsError, match=refused):
        merge(models[0], models[1:], tmp_path / "b", options, resources, thresholds=given)
    assert "only pass 2's kept counts check" in caplog.text
    assert not (tmp_path / "b").exists()
    # the same arrays as the thresholds' inputs pass
    same = [bf16(_arrays(p)) for p in (base, ft1, ft2)]
    merge(same[0], same[1:], tmp_path / "c", options, resources, thresholds=given)


def test_resume_checks_the_kept_counts_of_journaled_blocks(same_dates: tuple[Path, list[Path]], tmp_path: Path) -> None:
    """A resumed merge adds the kept counts its journal holds for the blocks done before: a journal
    whose counts disagree with pass 1's (as if an input changed between the runs) is refused."""
    from ooc_ties import Resources
    from ooc_ties.io.staging import STATE_DIR, staging_path

    base, (ft1, ft2, _) = same_dates
    out = tmp_path / "out"
    resources = Resources(max_block_elements=4096, threads=1)

    def stop_in_pass_2(description: str, total: int) -> object:
        class Bar:
            done = 0

            def advance(self, nbytes: int) -> None:
                self.done += nbytes
                if description.startswith("pass 2") and self.done > total // 2:
                    raise KeyboardInterrupt

            def close(self) -> None:
                pass

        return Bar()

    with pytest.raises(KeyboardInterrupt):
        merge(base, [ft1, ft2], out, PRESETS["paper"], resources, progress=stop_in_pass_2)
    log = staging_path(out.absolute()) / STATE_DIR / "blocks.log"
    lines = log.read_text().splitlines()
    merged = [line.split() for line in lines if line.startswith("b ")]
    assert merged and all(len(parts) == 2 + 3 + 2 for parts in merged)  # ordinal, 3 votes, 2 kept counts
    first = lines.index(" ".join(merged[0]))
    lines[first] = " ".join([*merged[0][:-1], str(int(merged[0][-1]) + 1)])  # one value more of model 2
    log.write_text("\n".join(lines) + "\n")
    tampered = r"the merge kept [\d,]+ values of the sample blocks of the model where pass 1 counted"
    with pytest.raises(IncompatibleCheckpointsError, match=tampered):
        merge(base, [ft1, ft2], out, PRESETS["paper"], resources, resume=True)
