"""Request schema and validation rules, one by one (real decoders from sadtalker.media)."""

from __future__ import annotations

import json
import os
import wave
from pathlib import Path

import numpy as np
import pydantic
import pytest
from PIL import Image

from serving.config import ServingConfig
from serving.schema import GenerateRequest
from serving.validation import RequestInvalid, RequestValidator, fingerprint_of


def write_png(path: Path, width: int = 48, height: int = 64) -> Path:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_wav(path: Path, seconds: float = 1.0, rate: int = 16000) -> Path:
    samples = (np.sin(np.arange(int(seconds * rate)) / 7.0) * 3000).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return path


def make_config(tmp_path: Path, **limits: object) -> ServingConfig:
    inputs = tmp_path / "inputs"
    inputs.mkdir(exist_ok=True)
    return ServingConfig(
        checkpoint_dir=tmp_path / "ckpt",
        output_dir=tmp_path / "out",
        state_dir=tmp_path / "state",
        input_dirs=(inputs.resolve(),),
        **limits,  # type: ignore[arg-type]
    )


@pytest.fixture
def config(tmp_path: Path) -> ServingConfig:
    return make_config(tmp_path)


@pytest.fixture
def files(config: ServingConfig) -> dict[str, Path]:
    root = config.input_dirs[0]
    return {"image": write_png(root / "face.png"), "audio": write_wav(root / "speech.wav")}


def request(image: Path | str, audio: Path | str, **extra: object) -> GenerateRequest:
    return GenerateRequest(source_image=image, driven_audio=audio, option="crop", **extra)  # type: ignore[arg-type]


def rejected(validator: RequestValidator, req: GenerateRequest) -> RequestInvalid:
    with pytest.raises(RequestInvalid) as info:
        validator.validate(req)
    return info.value


# -- schema --------------------------------------------------------------------------------------------------


def test_schema_accepts_str_and_path_and_shows_strings() -> None:
    from_path = GenerateRequest(source_image=Path("/in/a.png"), driven_audio=Path("/in/b.wav"), option="full")
    from_str = GenerateRequest(source_image="/in/a.png", driven_audio="/in/b.wav", option="full")
    assert from_path == from_str and isinstance(from_path.source_image, str)
    assert from_path.model_dump_json() == from_str.model_dump_json()
    properties = GenerateRequest.model_json_schema()["properties"]
    assert properties["source_image"]["type"] == properties["driven_audio"]["type"] == "string"
    assert sorted(properties["option"]["enum"]) == ["crop", "full"]


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"option": "resize"}, "option"),
        ({"landmarks": [[1.0, 2.0]] * 67}, "landmarks"),
        ({"landmarks": [[1.0, 2.0, 3.0]] * 68}, "landmarks"),
        ({"landmarks": [[1.0, float("nan")]] * 68}, "landmarks"),
        ({"request_id": "has space"}, "request_id"),
        ({"request_id": "x" * 129}, "request_id"),
        ({"unknown_field": 1}, "unknown_field"),
        ({"source_image": ""}, "source_image"),
    ],
)
def test_schema_rejects_with_field_name(extra: dict, field: str) -> None:
    fields = {"source_image": "/in/a.png", "driven_audio": "/in/b.wav", "option": "crop"} | extra
    with pytest.raises(pydantic.ValidationError) as info:
        GenerateRequest(**fields)
    assert info.value.errors()[0]["loc"][0] == field


def test_schema_accepts_68_landmarks() -> None:
    req = request("/a.png", "/b.wav", landmarks=[[float(i), float(i)] for i in range(68)])
    assert req.landmarks is not None and len(req.landmarks) == 68


def test_landmarks_must_be_numbers_not_strings() -> None:
    from pydantic import ValidationError

    from serving.schema import GenerateRequest

    body = {"source_image": "/a.png", "driven_audio": "/b.wav", "option": "crop"}
    assert GenerateRequest.model_validate_json(json.dumps(body | {"landmarks": [[1, 2]] * 68})).landmarks is not None
    with pytest.raises(ValidationError, match="landmarks"):
        GenerateRequest.model_validate_json(json.dumps(body | {"landmarks": [["1", "2"]] * 68}))
    with pytest.raises(ValidationError, match="landmarks"):
        GenerateRequest.model_validate(body | {"landmarks": [["1", "2"]] * 68})


def test_fingerprint_is_stable_for_stored_jobs_and_new_optional_fields() -> None:
    """Version 1 stored sha256 of these four keys; jobs from then must still match their resubmissions."""
    import hashlib

    from serving.schema import JobRequest

    job = JobRequest(source_image="/i/a.png", driven_audio="/i/b.wav", preset="full", request_id="r")
    v1 = json.dumps(
        {"source_image": "/i/a.png", "driven_audio": "/i/b.wav", "option": "full", "landmarks": None},
        sort_keys=True,
        separators=(",", ":"),
    )
    assert job.fingerprint() == hashlib.sha256(v1.encode()).hexdigest()

    class Later(JobRequest):
        mood: str | None = None

    assert Later(**job.model_dump()).fingerprint() == job.fingerprint()
    assert Later(**job.model_dump(), mood="calm").fingerprint() != job.fingerprint()


# -- files ---------------------------------------------------------------------------------------------------


def test_valid_request_is_resolved(config: ServingConfig, files: dict[str, Path]) -> None:
    checked = RequestValidator(config).validate(request(files["image"], str(files["audio"]), request_id="r1"))
    assert checked.source_image == str(files["image"].resolve())
    assert checked.driven_audio == str(files["audio"].resolve())
    assert checked.request_id == "r1" and checked.preset == "crop"
    assert checked.audio_seconds == pytest.approx(1.0)
    # The raw request's fingerprint (used before validation) is the validated one's; request_id is not part of it.
    assert checked.fingerprint() == fingerprint_of(request(files["image"], files["audio"]))


def test_missing_file(config: ServingConfig, files: dict[str, Path]) -> None:
    error = rejected(RequestValidator(config), request(files["image"], files["audio"].with_name("nope.wav")))
    assert error.field == "driven_audio" and "file not found" in str(error)
    assert str(error).startswith("driven_audio: ")


def test_directory(config: ServingConfig, files: dict[str, Path]) -> None:
    folder = config.input_dirs[0] / "folder.png"
    folder.mkdir()
    error = rejected(RequestValidator(config), request(folder, files["audio"]))
    assert error.field == "source_image" and "is a directory" in str(error)


def test_not_a_regular_file(config: ServingConfig, files: dict[str, Path]) -> None:
    fifo = config.input_dirs[0] / "pipe.wav"
    os.mkfifo(fifo)
    error = rejected(RequestValidator(config), request(files["image"], fifo))
    assert error.field == "driven_audio" and "not a regular file" in str(error)


def test_relative_path(config: ServingConfig) -> None:
    error = rejected(RequestValidator(config), request("inputs/face.png", "/x.wav"))
    assert error.field == "source_image" and "absolute" in str(error)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(config: ServingConfig, files: dict[str, Path]) -> None:
    files["image"].chmod(0)
    error = rejected(RequestValidator(config), request(files["image"], files["audio"]))
    assert error.field == "source_image" and "not readable" in str(error)


def test_unreadable_file_reported_even_for_root(
    config: ServingConfig, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import serving.validation as validation

    def deny(path: object, *args: object, **kwargs: object) -> object:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(validation, "open", deny, raising=False)
    error = rejected(RequestValidator(config), request(files["image"], files["audio"]))
    assert error.field == "source_image" and "not readable by the service (Permission denied)" in str(error)


def test_outside_allowed_roots(config: ServingConfig, files: dict[str, Path], tmp_path: Path) -> None:
    outside = write_png(tmp_path / "elsewhere.png")
    error = rejected(RequestValidator(config), request(outside, files["audio"]))
    assert error.field == "source_image" and "outside the allowed input directories" in str(error)


def test_outside_roots_is_checked_before_existence(config: ServingConfig, files: dict[str, Path]) -> None:
    # Otherwise "file not found" vs "outside" would reveal which files exist elsewhere on the server.
    error = rejected(RequestValidator(config), request("/etc/definitely-missing.png", files["audio"]))
    assert "outside the allowed input directories" in str(error)


def test_dotdot_escape(config: ServingConfig, files: dict[str, Path], tmp_path: Path) -> None:
    write_png(tmp_path / "secret.png")
    sneaky = f"{config.input_dirs[0]}/../secret.png"
    error = rejected(RequestValidator(config), request(sneaky, files["audio"]))
    assert error.field == "source_image" and "outside" in str(error)


def test_symlink_escape(config: ServingConfig, files: dict[str, Path], tmp_path: Path) -> None:
    target = write_wav(tmp_path / "private.wav")
    link = config.input_dirs[0] / "innocent.wav"
    link.symlink_to(target)
    error = rejected(RequestValidator(config), request(files["image"], link))
    assert error.field == "driven_audio" and "outside" in str(error)


def test_symlink_inside_roots_is_fine(config: ServingConfig, files: dict[str, Path]) -> None:
    link = config.input_dirs[0] / "alias.png"
    link.symlink_to(files["image"])
    checked = RequestValidator(config).validate(request(link, files["audio"]))
    assert checked.source_image == str(files["image"].resolve())


def test_file_too_big(tmp_path: Path) -> None:
    config = make_config(tmp_path, max_image_bytes=100)
    root = config.input_dirs[0]
    error = rejected(RequestValidator(config), request(write_png(root / "a.png"), write_wav(root / "a.wav")))
    assert error.field == "source_image" and "the limit is 100 bytes" in str(error)


def test_empty_file(config: ServingConfig, files: dict[str, Path]) -> None:
    empty = config.input_dirs[0] / "empty.png"
    empty.write_bytes(b"")
    error = rejected(RequestValidator(config), request(empty, files["audio"]))
    assert error.field == "source_image" and "empty" in str(error)


# -- content -------------------------------------------------------------------------------------------------


def test_bad_image(config: ServingConfig, files: dict[str, Path]) -> None:
    junk = config.input_dirs[0] / "junk.png"
    junk.write_bytes(b"this is not a PNG at all" * 10)
    error = rejected(RequestValidator(config), request(junk, files["audio"]))
    assert error.field == "source_image" and "cannot be used as an image" in str(error)


def test_too_many_pixels(tmp_path: Path) -> None:
    config = make_config(tmp_path, max_image_pixels=1000)
    root = config.input_dirs[0]
    error = rejected(RequestValidator(config), request(write_png(root / "a.png"), write_wav(root / "a.wav")))
    assert error.field == "source_image" and "48x64 = 3,072 pixels; the limit is 1,000" in str(error)


def test_bad_audio(config: ServingConfig, files: dict[str, Path]) -> None:
    junk = config.input_dirs[0] / "junk.wav"
    junk.write_bytes(b"RIFF....WAVEnope" + bytes(200))
    error = rejected(RequestValidator(config), request(files["image"], junk))
    assert error.field == "driven_audio" and "cannot be used as audio" in str(error)


def test_audio_too_long(tmp_path: Path) -> None:
    config = make_config(tmp_path, max_audio_seconds=0.5)
    root = config.input_dirs[0]
    error = rejected(RequestValidator(config), request(write_png(root / "a.png"), write_wav(root / "a.wav", 1.0)))
    assert error.field == "driven_audio" and "1.0 s long; the limit is 0.5 s" in str(error)


def test_audio_too_short(config: ServingConfig, files: dict[str, Path]) -> None:
    short = write_wav(config.input_dirs[0] / "blip.wav", 0.02)
    error = rejected(RequestValidator(config), request(files["image"], short))
    assert error.field == "driven_audio" and "at least 40 ms" in str(error)


def test_landmarks_outside_image(config: ServingConfig, files: dict[str, Path]) -> None:
    points = [[10.0, 10.0]] * 67 + [[500.0, 10.0]]
    error = rejected(RequestValidator(config), request(files["image"], files["audio"], landmarks=points))
    assert error.field == "landmarks" and "point 67" in str(error) and "48x64" in str(error)


def test_landmarks_passed_through(config: ServingConfig, files: dict[str, Path]) -> None:
    points = [[float(i % 40), float(i % 60)] for i in range(68)]
    checked = RequestValidator(config).validate(request(files["image"], files["audio"], landmarks=points))
    assert checked.landmarks is not None and checked.landmarks[5] == (5.0, 5.0)
