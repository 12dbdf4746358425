"""Checkpoint files from outside a run are read without running code: `elta test`, `elta
predict` and `init_from=` refuse a pickle that would execute code, a truncated file, a file that
is not a checkpoint and a checkpoint of another program, each with one clear error naming the
file, never a traceback."""

import os
import pickle
from pathlib import Path

import pytest
import torch

from elta_lightning.checkpoints import CheckpointError, load_checkpoint, read_checkpoint
from elta_lightning.cli import main
from elta_lightning.config import load_config
from elta_lightning.run import train


class RunsCode:
    """Unpickling this object would create a file (what a hostile checkpoint could do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, synthetic_cache) -> Path:
    from tiny_runs import tiny_run_overrides

    runs = tmp_path_factory.mktemp("runs")
    overrides = [*tiny_run_overrides(synthetic_cache, runs), "trainer.max_epochs=1", "parts=fds"]
    return train(load_config(overrides)).run_dir / "checkpoints" / "best.ckpt"


def test_our_checkpoints_load_with_weights_only_and_keep_part_state(checkpoint) -> None:
    read_checkpoint(checkpoint)
    module = load_checkpoint(checkpoint)
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert "part_states.fds.running_mean" in saved
    for key, value in saved.items():
        assert torch.equal(module.state_dict()[key], value), key


def _bad_files(tmp_path: Path, checkpoint: Path) -> dict[str, tuple[Path, str]]:
    marker = tmp_path / "code-ran"
    hostile = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {}, "payload": RunsCode(marker)}, hostile)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(checkpoint.read_bytes()[:5000])
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}, "epoch": 3}, other)
    return {
        "hostile": (hostile, "holds Python objects other than tensors"),
        "truncated": (truncated, "not a readable checkpoint"),
        "text": (text, "not a readable checkpoint"),
        "other program": (other, "not an elta-lightning checkpoint"),
    }


@pytest.mark.parametrize("kind", ["hostile", "truncated", "text", "other program"])
def test_bad_files_are_one_clear_error_and_run_no_code(tmp_path, checkpoint, capsys, kind):
    path, expected = _bad_files(tmp_path, checkpoint)[kind]
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(path)
    assert main(["test", str(path)]) == 1
    err = capsys.readouterr().err
    assert str(path) in err and expected in err and "Traceback" not in err
    images = tmp_path / "images"
    images.mkdir()
    assert main(["predict", str(path), "--images", str(images), "--out", "x.csv"]) == 1
    assert not (tmp_path / "code-ran").exists()  # the pickle's payload never ran
    assert pickle.dumps  # the payload class is picklable, so torch.save stored it for real


def test_init_from_reads_safely_too(tmp_path, checkpoint, tiny_overrides, capsys) -> None:
    path, expected = _bad_files(tmp_path, checkpoint)["hostile"]
    assert main(["train", *tiny_overrides, f"init_from={path}"]) == 1
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "code-ran").exists()
