"""Configuration from the environment: defaults, parsing, and one clear error per bad value."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from serving.config import REPO_ROOT, ConfigError, ServingConfig


def test_defaults_are_repo_relative_and_documented_values() -> None:
    config = ServingConfig.from_env({})
    assert config.checkpoint_dir == REPO_ROOT / "checkpoints"
    assert config.output_dir == REPO_ROOT / "output"
    assert config.state_dir == REPO_ROOT / "state"
    assert config.input_dirs == (REPO_ROOT / "inputs",)
    assert config.max_queue == 16
    assert config.allow_cpu is False
    assert config.shutdown_grace == 30.0
    assert config.pipeline_factory is None and not config.uses_dev_pipeline
    # The job database and temp dirs live in the state dir, never among the outputs clients watch.
    assert not config.database_path.is_relative_to(config.output_dir)
    assert not config.temp_root.is_relative_to(config.output_dir)


def test_values_are_parsed(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    config = ServingConfig.from_env(
        {
            "SADTALKER_INPUT_DIRS": f"{a}{os.pathsep}{b}",
            "SADTALKER_MAX_QUEUE": "3",
            "SADTALKER_ALLOW_CPU": "yes",
            "SADTALKER_SHUTDOWN_GRACE": "2.5",
            "SADTALKER_MAX_AUDIO_SECONDS": "12",
            "SADTALKER_MAX_IMAGE_PIXELS": "1_000_000",
            "SADTALKER_PIPELINE_FACTORY": "tests.fakes:create",
            "SADTALKER_OUTPUT_DIR": str(tmp_path / "out"),
        }
    )
    assert config.input_dirs == (a.resolve(), b.resolve())
    assert (config.max_queue, config.allow_cpu, config.shutdown_grace) == (3, True, 2.5)
    assert config.max_audio_seconds == 12.0 and config.max_image_pixels == 1_000_000
    assert config.uses_dev_pipeline
    assert config.output_dir == (tmp_path / "out").resolve()


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("SADTALKER_MAX_QUEUE", "many", "SADTALKER_MAX_QUEUE='many' is not an integer"),
        ("SADTALKER_MAX_QUEUE", "0", "SADTALKER_MAX_QUEUE='0' must be >= 1"),
        ("SADTALKER_ALLOW_CPU", "maybe", "SADTALKER_ALLOW_CPU='maybe' must be 1 or 0"),
        ("SADTALKER_SHUTDOWN_GRACE", "-1", "SADTALKER_SHUTDOWN_GRACE='-1' must be >= 0"),
        ("SADTALKER_SHUTDOWN_GRACE", "nan", "must be a finite number"),
        ("SADTALKER_MAX_AUDIO_SECONDS", "abc", "SADTALKER_MAX_AUDIO_SECONDS='abc' is not a number"),
        ("SADTALKER_PIPELINE_FACTORY", "no_colon", "must look like 'package.module:callable'"),
        ("SADTALKER_INPUT_DIRS", "/definitely/not/here", "SADTALKER_INPUT_DIRS: /definitely/not/here is not an"),
        ("SADTALKER_GPUS", "0", "SADTALKER_GPUS='0' must be >= 1"),
        ("SADTALKER_DATABASE_URL", "mysql://x/y", "SADTALKER_DATABASE_URL must be a postgresql:// URL"),
    ],
)
def test_invalid_values_name_the_variable(name: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        ServingConfig.from_env({name: value})
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_prepare_directories_creates_output_state_and_temp(tmp_path: Path) -> None:
    config = ServingConfig(
        checkpoint_dir=tmp_path / "ckpt",
        output_dir=tmp_path / "out",
        state_dir=tmp_path / "state",
        input_dirs=(tmp_path,),
    )
    config.prepare_directories()
    assert config.output_dir.is_dir() and config.state_dir.is_dir() and config.temp_root.is_dir()


def test_prepare_directories_reports_unusable_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    config = ServingConfig(
        checkpoint_dir=tmp_path, output_dir=blocker / "out", state_dir=tmp_path / "state", input_dirs=(tmp_path,)
    )
    with pytest.raises(ConfigError, match="SADTALKER_OUTPUT_DIR: cannot create"):
        config.prepare_directories()


def test_gpu_count_and_database_url() -> None:
    # Without SADTALKER_GPUS: the GPUs CUDA_VISIBLE_DEVICES exposes (up to the first invalid index); 1 without any.
    assert ServingConfig.from_env({"CUDA_VISIBLE_DEVICES": "0,2,3"}).gpus == 3
    assert ServingConfig.from_env({"CUDA_VISIBLE_DEVICES": "1,-1,2"}).gpus == 1
    assert ServingConfig.from_env({"CUDA_VISIBLE_DEVICES": ""}).gpus == 1
    assert ServingConfig.from_env({"CUDA_VISIBLE_DEVICES": "0,1", "SADTALKER_GPUS": "1"}).gpus == 1
    assert ServingConfig.gpus_from_env({"SADTALKER_GPUS": "4"}) == 4
    assert ServingConfig.gpus_from_env({"SADTALKER_GPUS": "zero"}) == 1  # preflight reports the bad value
    assert ServingConfig.from_env({}).database_url is None  # SQLite in the state dir
    url = "postgresql://sadtalker:secret@db.internal:5432/sadtalker"
    assert ServingConfig.from_env({"SADTALKER_DATABASE_URL": url}).database_url == url


def test_inductor_kernel_cache_goes_to_the_state_volume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernels compiled at start-up land in <state dir>/inductor, so a restarted container reloads them. Importing
    the real factory's module imports inductor, which sets TORCHINDUCTOR_CACHE_DIR to its own /tmp default when it
    is unset: the state-volume default must be in place before that import (it once was not: every start recompiled,
    ~6 min in the image)."""
    from serving import pipeline_factory

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    seen: dict[str, str | None] = {}

    def factory(*args: object, **kwargs: object) -> object:
        seen["cache_dir"] = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        return object()

    def resolve(path: str | None) -> object:
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", "/tmp/torchinductor_default")  # what importing inductor does
        return factory

    monkeypatch.setattr(pipeline_factory, "resolve_factory", resolve)
    config = ServingConfig(
        checkpoint_dir=tmp_path / "ckpt", output_dir=tmp_path / "out", state_dir=tmp_path / "state", input_dirs=()
    )
    pipeline_factory.build_pipeline(config, "cpu")
    assert seen["cache_dir"] == str(tmp_path / "state" / "inductor")
