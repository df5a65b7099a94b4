"""Published torch files may pickle more than tensors: weights-only loading refuses them in one line naming the
file and the global, and the operator's allow-list (SADTALKER_ALLOWED_PICKLE_GLOBALS) admits named globals only."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from sadtalker.checkpoints import cli
from sadtalker.checkpoints.files import MAPPING_CROP_FILE
from sadtalker.checkpoints.manifest import default_manifest
from sadtalker.checkpoints.verify import require_checkpoints, verify_checkpoints
from sadtalker.errors import CheckpointError, PickleRefusedError
from sadtalker.render.renderer import load_mapping_state
from sadtalker.weights import ENV_ALLOWED_PICKLE_GLOBALS, allowed_pickle_globals, read_torch

_ADMIT_RE = re.compile(rf"{ENV_ALLOWED_PICKLE_GLOBALS}=(\S+)$")


@pytest.fixture
def numpy_mapping_dir(synthetic_checkpoints: Path, tmp_path: Path) -> Path:
    """A checkpoint dir whose crop mapping file also pickles numpy scalars (as a training script might save)."""
    root = tmp_path / "ckpt"
    root.mkdir()
    for spec in default_manifest().select("256"):
        if spec.name != MAPPING_CROP_FILE:
            (root / spec.name).symlink_to((synthetic_checkpoints / spec.name).resolve())
    original = torch.load(synthetic_checkpoints / MAPPING_CROP_FILE, weights_only=True, mmap=True)
    torch.save({**original, "best_loss": np.float64(0.125), "step": np.int64(229)}, root / MAPPING_CROP_FILE)
    return root


def _admitted(message: str) -> str:
    """The allow-list value the refusal message tells the operator to set."""
    match = _ADMIT_RE.search(message)
    assert match is not None, message
    return match.group(1)


def test_refused_by_default_with_one_line_naming_file_and_global(
    numpy_mapping_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_ALLOWED_PICKLE_GLOBALS, raising=False)
    path = numpy_mapping_dir / MAPPING_CROP_FILE
    with pytest.raises(PickleRefusedError) as info:
        read_torch(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "numpy" in message and "multiarray.scalar" in message
    assert all(name.startswith("numpy") for name in info.value.refused)
    assert info.value.kind == "checkpoint_pickle" and isinstance(info.value, CheckpointError)

    # verify and the start-up gate report the same single line, with the allow-list as the fix (not a download).
    problems = verify_checkpoints(numpy_mapping_dir, ("256",))
    assert [(p.file, p.kind) for p in problems] == [(MAPPING_CROP_FILE, "refused_global")]
    assert "\n" not in problems[0].message and "multiarray.scalar" in problems[0].message
    with pytest.raises(CheckpointError) as gate:
        require_checkpoints(numpy_mapping_dir, ("256",))
    assert ENV_ALLOWED_PICKLE_GLOBALS in str(gate.value) and "download" not in str(gate.value).split("Fix:")[1]
    assert cli.main(["verify", "--dir", str(numpy_mapping_dir), "--size", "256"]) == 1


def test_allow_list_admits_the_named_globals(numpy_mapping_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = numpy_mapping_dir / MAPPING_CROP_FILE
    monkeypatch.delenv(ENV_ALLOWED_PICKLE_GLOBALS, raising=False)
    # Follow the messages as an operator would: each names what is still refused (a numpy dtype's class is only
    # refused once the dtype itself is admitted) and the complete value to set.
    for _ in range(4):
        try:
            checkpoint = read_torch(path)
            break
        except PickleRefusedError as exc:
            monkeypatch.setenv(ENV_ALLOWED_PICKLE_GLOBALS, _admitted(str(exc)))
    else:
        pytest.fail("the allow-list from the messages never admitted the file")
    allowed = [name for _, name in allowed_pickle_globals()]
    assert allowed and all(name.startswith("numpy") for name in allowed)
    assert float(checkpoint["best_loss"]) == 0.125 and int(checkpoint["step"]) == 229
    state, _ = load_mapping_state(path)
    assert all(isinstance(value, torch.Tensor) for value in state.values())
    assert verify_checkpoints(numpy_mapping_dir, ("256",)) == []
    require_checkpoints(numpy_mapping_dir, ("256",))

    # Admitting one name is not blanket unpickling: a file pickling anything else is still refused.
    torch.save({"mapping": state, "epoch": 1, "when": np.datetime64("2024-01-01")}, path)
    with pytest.raises(PickleRefusedError):
        read_torch(path)


def test_allow_list_entries_must_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_ALLOWED_PICKLE_GLOBALS, "numpy.dtype, no_such_module.thing")
    with pytest.raises(CheckpointError, match=rf"{ENV_ALLOWED_PICKLE_GLOBALS}: cannot import 'no_such_module.thing'"):
        allowed_pickle_globals()
    assert [name for _, name in allowed_pickle_globals("numpy.dtype,")] == ["numpy.dtype"]


def test_code_in_a_pickle_is_never_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Exploit:
        def __reduce__(self):  # what a malicious checkpoint does: call a function at load time
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"w": Exploit()}, handle, protocol=2)
    monkeypatch.delenv(ENV_ALLOWED_PICKLE_GLOBALS, raising=False)
    with pytest.raises(CheckpointError):
        read_torch(path)
