"""The real pipeline behind the real server: `bentoml serve` on synthetic checkpoints renders both presets.

Slow (minutes on CPU: ~7 s per rendered frame and ~30 s per GFPGAN face with random weights), so marked
``slow``; `make test-slow` and CI run it.  Random RetinaFace weights "detect" hundreds of faces in any image,
so SADTALKER_ENHANCER_MAX_FACES=1 bounds GFPGAN's work to one face per frame.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import bentoml
import numpy as np
import pytest
import soundfile
from test_service_http import Dirs, Server, launch, server_env, wait_ready, wait_state

from sadtalker.video import probe_video
from serving.naming import OUTPUT_NAME_PATTERN

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_server(
    tmp_path_factory: pytest.TempPathFactory, reference_dir: Path, synthetic_checkpoints: Path
) -> Iterator[tuple[Server, Dirs, list[list[float]]]]:
    root = tmp_path_factory.mktemp("real")
    dirs = Dirs(root, root / "inputs", root / "output", root / "state")
    dirs.inputs.mkdir()
    case = reference_dir / "golden" / "crop_people0_256"
    shutil.copy(case / "people_0.png", dirs.inputs / "face.png")
    samples, rate = soundfile.read(case / "RD_Radio31_000_2s8.wav", dtype="int16")
    soundfile.write(dirs.inputs / "speech.wav", samples[: 3 * 640], rate)  # 3 video frames
    with np.load(case / "inputs.npz") as inputs:
        landmarks = inputs["lm68_orig"].tolist()
    env = server_env(
        dirs,
        SADTALKER_PIPELINE_FACTORY="",
        SADTALKER_CHECKPOINTS=str(synthetic_checkpoints),
        SADTALKER_ENHANCER_MAX_FACES="1",
        SADTALKER_SHUTDOWN_GRACE="600",
    )
    server = launch(dirs, env, "real")
    wait_ready(server)
    yield server, dirs, landmarks
    assert server.stop() == 0, server.output()


@pytest.mark.parametrize(("option", "size_wh"), [("crop", (512, 512)), ("full", (948, 948))])
def test_generate_renders_a_real_video(real_server, option: str, size_wh: tuple[int, int]) -> None:
    server, dirs, landmarks = real_server
    with bentoml.SyncHTTPClient(server.url, timeout=60) as client:
        answer = client.generate(
            driven_audio=str(dirs.inputs / "speech.wav"),
            source_image=str(dirs.inputs / "face.png"),
            option=option,
            request_id=f"real-{option}",
            landmarks=landmarks,
        )
    assert answer == "1"
    status = wait_state(server, f"real-{option}", {"completed", "failed"}, timeout=1200)
    assert status["state"] == "completed", status
    output = Path(status["output_path"])
    assert output.parent == dirs.output and OUTPUT_NAME_PATTERN.fullmatch(output.name)
    info = probe_video(output)
    assert (info["video_codec"], info["audio_codec"], info["fps"], info["frames"]) == ("h264", "aac", 25, 3)
    assert (info["width"], info["height"]) == size_wh
    assert [p for p in dirs.output.iterdir() if p.name.startswith(".")] == []
    assert list((dirs.state / "tmp").iterdir()) == []
