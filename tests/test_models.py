"""Loading every network from the checkpoint files: once per file, strictly, 256 and 512."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sadtalker.models import load_size_models
from sadtalker.weights import CheckpointError


@pytest.mark.parametrize("size", [256, 512])
def test_both_sizes_and_both_mapping_files_load(talker, talker_512, size: int) -> None:
    """The session pipelines (SadTalker loads each size with load_size_models, both mapping files)."""
    models = (talker if size == 256 else talker_512).models[size]
    assert models.size == size and sorted(models.renderers) == [70, 73]
    crop, full = models.renderers[70], models.renderers[73]
    # The crop and full renderers share the big networks; only the mapping nets differ.
    assert crop.generator is full.generator and crop.kp_detector is full.kp_detector
    assert crop.mapping.first[0].in_channels == 70 and full.mapping.first[0].in_channels == 73


def test_a_corrupted_mapping_file_fails_naming_file_key_and_shapes(synthetic_checkpoints: Path, tmp_path: Path) -> None:
    for source in synthetic_checkpoints.iterdir():
        (tmp_path / source.name).symlink_to(source)
    name = "mapping_00109-model.pth.tar"
    checkpoint = torch.load(synthetic_checkpoints / name, map_location="cpu", weights_only=True)
    checkpoint["mapping"]["fc_exp.weight"] = checkpoint["mapping"]["fc_exp.weight"][:40]
    (tmp_path / name).unlink()
    torch.save(checkpoint, tmp_path / name)
    with pytest.raises(CheckpointError) as raised:
        load_size_models(tmp_path, 256, torch.device("cpu"))
    message = str(raised.value)
    assert name in message and "fc_exp.weight" in message and "[40, 1024]" in message and "[45, 1024]" in message
