"""A photo without a face, through the real server and the real pipeline: the job fails with a clear reason.

Face detection runs in the render worker, so the request is accepted (it cannot know yet) and the job ends
``failed`` with ``error_kind`` ``no_face``.  The checkpoints are the synthetic ones with a RetinaFace that never
finds a face (random weights would "find" hundreds), so the real detector's empty answer drives the path.
Slow: one real `bentoml serve` start loads every network (~1 min on this CPU).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import bentoml
import pytest
from helpers import CROP_CASE, case_inputs, short_wav, write_blind_checkpoints
from test_service_http import Dirs, launch, server_env, wait_ready, wait_state

pytestmark = pytest.mark.slow


def test_no_face_job_fails_with_a_clear_message(
    tmp_path: Path, reference_dir: Path, synthetic_checkpoints: Path
) -> None:
    dirs = Dirs(tmp_path, tmp_path / "inputs", tmp_path / "output", tmp_path / "state")
    dirs.inputs.mkdir()
    image, _, wav = case_inputs(reference_dir, CROP_CASE)
    shutil.copy(image, dirs.inputs / "face.png")
    short_wav(wav, dirs.inputs / "speech.wav", frames=3)
    env = server_env(
        dirs,
        SADTALKER_PIPELINE_FACTORY="",
        SADTALKER_CHECKPOINTS=str(write_blind_checkpoints(synthetic_checkpoints, tmp_path / "checkpoints")),
        SADTALKER_ENHANCER_MAX_FACES="1",
    )
    server = launch(dirs, env, "no-face")
    try:
        wait_ready(server)
        with bentoml.SyncHTTPClient(server.url, timeout=60) as client:
            answer = client.generate(
                driven_audio=str(dirs.inputs / "speech.wav"),
                source_image=str(dirs.inputs / "face.png"),
                option="crop",
                request_id="no-face",
            )
        assert answer == "1"
        status = wait_state(server, "no-face", {"completed", "failed"}, timeout=600)
    finally:
        code = server.stop()
    assert status["state"] == "failed", status
    assert status["error_kind"] == "no_face", status
    assert status["error"] == "source_image: no face found in face.png; use a clear frontal photo or pass landmarks"
    assert not Path(status["output_path"]).exists()
    assert list(dirs.output.iterdir()) == []
    assert code == 0, server.output()
