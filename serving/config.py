"""Service configuration, read once from the environment into a frozen dataclass.

Every knob is an environment variable so the same image runs in dev, CI and production. Values are
validated when read: a bad value stops the service at start-up with one line naming the variable,
instead of surfacing later as a confusing per-request failure.

* SADTALKER_CHECKPOINTS (default `<repo>/checkpoints`): directory with the official checkpoint files.
* SADTALKER_OUTPUT_DIR (`<repo>/output`): finished videos, `<YYYYmmdd-HHMMSS>_<8 hex>.mp4`.
* SADTALKER_STATE_DIR (`<repo>/state`): job database (SQLite, WAL) and per-job temp dirs; keep it
  outside the output dir (clients watch that one).
* SADTALKER_INPUT_DIRS (`<repo>/inputs`, created if missing): os.pathsep-separated roots that request
  files must lie in, after symlinks and `..` are resolved. Explicitly listed roots must exist.
* SADTALKER_MAX_QUEUE (16): queued (not yet running) jobs before `/generate` answers 429.
* SADTALKER_ALLOW_CPU (0): 1 = run on CPU when CUDA is missing. Dev/CI only (~7 s per 256-px frame).
* SADTALKER_SHUTDOWN_GRACE (30): seconds SIGTERM waits for the running job; after that the job is
  interrupted and stays queued for the next start.
* SADTALKER_MAX_IMAGE_BYTES (20 MiB), SADTALKER_MAX_IMAGE_PIXELS (4,194,304 = 2048²): source image caps
  (the pixel count is read from the header, before decoding; the full preset's video is twice the photo's
  size, as GFPGAN upscales by 2 like the original, so 2048² keeps it within H.264's 4096² range).
* SADTALKER_MAX_AUDIO_BYTES (100 MiB), SADTALKER_MAX_AUDIO_SECONDS (300): audio caps (25 video frames
  per second of audio).
* SADTALKER_MAX_VIDEO_BYTES (100 MiB), SADTALKER_MAX_VIDEO_SECONDS (300): caps of the optional reference
  videos `ref_eyeblink` / `ref_pose` (their frame size is capped by SADTALKER_MAX_IMAGE_PIXELS; only as many
  frames as the audio has are decoded, so a longer video only costs bytes).
* SADTALKER_MAX_ATTEMPTS (3): a job whose render was cut short this many times (process killed or
  crashed mid-render) is marked failed instead of being retried forever.
* SADTALKER_SIZE (256): render size, 256 or 512 (which SadTalker_V0.0.2_<size>.safetensors is loaded).
* SADTALKER_ENHANCER_MAX_FACES (unset = all, as the original): faces GFPGAN restores per frame, largest
  first; bounds the enhancer's cost on group photos.
* SADTALKER_LEASE_SECONDS (30): a running job's lease; its worker renews it every third of that. A job whose
  worker died is taken back (requeued) once its lease expires, by this or any server on the state directory.
* SADTALKER_GPUS (default: the visible GPUs, from CUDA_VISIBLE_DEVICES or /dev/nvidiaN; 1 without any): render
  workers on this server, one BentoML worker process per GPU, each with its own copy of the models on its own
  device (`cuda:<worker index>`); all take jobs from the same store through leases.
* SADTALKER_DATABASE_URL (unset = SQLite in the state dir): a PostgreSQL URL (`postgresql://user:pw@host/db`);
  every server given the same URL shares one queue (see README "Scaling out").
* SADTALKER_MAX_BODY_BYTES (65536): largest JSON request body; larger ones get 413 before being parsed.
* SADTALKER_PRECISION (exact): `exact` (float32, the reference's tolerances) or `fast` (fp16 on CUDA, bf16
  on CPU where safe; fidelity measured in README "Speed").
* SADTALKER_COMPILE (1): compile the per-frame networks with torch.compile at start-up (minutes; jobs never
  compile). Inductor's kernel cache goes to TORCHINDUCTOR_CACHE_DIR, by default `<state dir>/inductor`.
* SADTALKER_PIPELINE_FACTORY (unset): DEV/TEST ONLY. `module:callable` building the pipeline instead of
  `sadtalker.pipeline:SadTalker`, e.g. `tests.fakes:create` from the repository root; checkpoints are then
  not verified.

Issue 15 settings are read by their own modules (and checked at start-up by service.py): SADTALKER_API_TOKENS,
SADTALKER_API_TOKEN_FILE, SADTALKER_METRICS_REQUIRE_TOKEN, SADTALKER_CORS_ORIGINS (serving/auth.py) and
SADTALKER_CHECK_FACE_ON_SUBMIT (serving/webapp.py). Uploads use SADTALKER_MAX_IMAGE_BYTES / _AUDIO_BYTES /
_VIDEO_BYTES as caps.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sadtalker.contracts import FPS

REPO_ROOT = Path(__file__).resolve().parents[1]

DEFAULT_PIPELINE_FACTORY = "sadtalker.pipeline:SadTalker"
# One video frame per 40 ms of audio; shorter audio gives no frame.
MIN_AUDIO_SECONDS = 1.0 / FPS

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    """An environment variable holds a value the service cannot use; the message names it."""


@dataclass(frozen=True)
class ServingConfig:
    checkpoint_dir: Path
    output_dir: Path
    state_dir: Path
    input_dirs: tuple[Path, ...]
    max_queue: int = 16
    allow_cpu: bool = False
    shutdown_grace: float = 30.0
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 2048 * 2048
    max_audio_bytes: int = 100 * 1024 * 1024
    max_audio_seconds: float = 300.0
    max_video_bytes: int = 100 * 1024 * 1024
    max_video_seconds: float = 300.0
    max_attempts: int = 3
    render_size: int = 256
    enhancer_max_faces: int | None = None
    pipeline_factory: str | None = None
    lease_seconds: float = 30.0
    max_body_bytes: int = 64 * 1024
    precision: str = "exact"
    compile: bool = True
    database_url: str | None = None
    gpus: int = 1

    @property
    def database_path(self) -> Path:
        return self.state_dir / "jobs.sqlite3"

    @property
    def temp_root(self) -> Path:
        """Parent of the per-job temp dirs `<job id>/`; at start-up, those of jobs without a live lease go."""
        return self.state_dir / "tmp"

    @property
    def uses_dev_pipeline(self) -> bool:
        return self.pipeline_factory is not None and self.pipeline_factory != DEFAULT_PIPELINE_FACTORY

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServingConfig:
        """Read and validate every variable; raises ConfigError naming the first bad one."""
        env = os.environ if env is None else env
        input_dirs_set = bool(env.get("SADTALKER_INPUT_DIRS", "").strip())
        config = cls(
            checkpoint_dir=_path(env, "SADTALKER_CHECKPOINTS", REPO_ROOT / "checkpoints"),
            output_dir=_path(env, "SADTALKER_OUTPUT_DIR", REPO_ROOT / "output"),
            state_dir=_path(env, "SADTALKER_STATE_DIR", REPO_ROOT / "state"),
            input_dirs=_paths(env, "SADTALKER_INPUT_DIRS", (REPO_ROOT / "inputs",)),
            max_queue=_int(env, "SADTALKER_MAX_QUEUE", 16, minimum=1),
            allow_cpu=env_flag(env, "SADTALKER_ALLOW_CPU", False),
            shutdown_grace=_float(env, "SADTALKER_SHUTDOWN_GRACE", 30.0, minimum=0.0),
            max_image_bytes=_int(env, "SADTALKER_MAX_IMAGE_BYTES", 20 * 1024 * 1024, minimum=1),
            max_image_pixels=_int(env, "SADTALKER_MAX_IMAGE_PIXELS", 2048 * 2048, minimum=1),
            max_audio_bytes=_int(env, "SADTALKER_MAX_AUDIO_BYTES", 100 * 1024 * 1024, minimum=1),
            max_audio_seconds=_float(env, "SADTALKER_MAX_AUDIO_SECONDS", 300.0, minimum=MIN_AUDIO_SECONDS),
            max_video_bytes=_int(env, "SADTALKER_MAX_VIDEO_BYTES", 100 * 1024 * 1024, minimum=1),
            max_video_seconds=_float(env, "SADTALKER_MAX_VIDEO_SECONDS", 300.0, minimum=MIN_AUDIO_SECONDS),
            max_attempts=_int(env, "SADTALKER_MAX_ATTEMPTS", 3, minimum=1),
            render_size=_choice(env, "SADTALKER_SIZE", 256, (256, 512)),
            enhancer_max_faces=_optional_int(env, "SADTALKER_ENHANCER_MAX_FACES", minimum=1),
            pipeline_factory=_factory(env, "SADTALKER_PIPELINE_FACTORY"),
            lease_seconds=_float(env, "SADTALKER_LEASE_SECONDS", 30.0, minimum=1.0),
            max_body_bytes=_int(env, "SADTALKER_MAX_BODY_BYTES", 64 * 1024, minimum=1024),
            precision=_word(env, "SADTALKER_PRECISION", "exact", ("exact", "fast")),
            compile=env_flag(env, "SADTALKER_COMPILE", True),
            database_url=_database_url(env, "SADTALKER_DATABASE_URL"),
            gpus=_int(env, "SADTALKER_GPUS", visible_gpu_count(env), minimum=1),
        )
        if input_dirs_set:
            # An explicit root that does not exist is a typo or a missing mount: say so now, not per request.
            for root in config.input_dirs:
                if not root.is_dir():
                    raise ConfigError(f"SADTALKER_INPUT_DIRS: {root} is not an existing directory")
        return config

    @staticmethod
    def max_body_bytes_from_env(env: Mapping[str, str] | None = None) -> int:
        """SADTALKER_MAX_BODY_BYTES alone (read when the HTTP app is built; a bad value is reported by preflight)."""
        try:
            return _int(os.environ if env is None else env, "SADTALKER_MAX_BODY_BYTES", 64 * 1024, minimum=1024)
        except ConfigError:
            return 64 * 1024

    @staticmethod
    def gpus_from_env(env: Mapping[str, str] | None = None) -> int:
        """SADTALKER_GPUS alone: read when the service class is declared (BentoML's worker count); a bad
        value falls back to 1 here and is reported by preflight."""
        env = os.environ if env is None else env
        try:
            return _int(env, "SADTALKER_GPUS", visible_gpu_count(env), minimum=1)
        except ConfigError:
            return 1

    def prepare_directories(self) -> None:
        """Create output/state/temp (and the default input) dirs; raises ConfigError if one is unusable."""
        for name, directory in (
            ("SADTALKER_OUTPUT_DIR", self.output_dir),
            ("SADTALKER_STATE_DIR", self.state_dir),
            ("SADTALKER_STATE_DIR", self.temp_root),
        ):
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"{name}: cannot create {directory} ({exc.strerror or exc})") from exc
            if not os.access(directory, os.W_OK | os.X_OK):
                raise ConfigError(f"{name}: {directory} is not writable by this process")
        for root in self.input_dirs:
            if root == REPO_ROOT / "inputs":
                root.mkdir(parents=True, exist_ok=True)


def _raw(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def _path(env: Mapping[str, str], name: str, default: Path) -> Path:
    value = _raw(env, name)
    if value is None:
        return default
    if "\x00" in value:
        raise ConfigError(f"{name}: contains a NUL byte")
    # Relative values are taken relative to the working directory `bentoml serve` was started in;
    # resolving once here keeps every later comparison on absolute, symlink-free paths.
    return Path(value).expanduser().resolve()


def _paths(env: Mapping[str, str], name: str, default: tuple[Path, ...]) -> tuple[Path, ...]:
    value = _raw(env, name)
    if value is None:
        return tuple(path.resolve() for path in default)
    parts = [part.strip() for part in value.split(os.pathsep) if part.strip()]
    if not parts:
        raise ConfigError(f"{name}: no directory given")
    return tuple(Path(part).expanduser().resolve() for part in parts)


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    value = _raw(env, name)
    if value is None:
        return default
    try:
        number = int(value.replace("_", ""))
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not an integer") from None
    if number < minimum:
        raise ConfigError(f"{name}={value!r} must be >= {minimum}")
    return number


def _choice(env: Mapping[str, str], name: str, default: int, choices: tuple[int, ...]) -> int:
    number = _int(env, name, default, minimum=min(choices))
    if number not in choices:
        raise ConfigError(f"{name}={number} must be one of {', '.join(map(str, choices))}")
    return number


def _word(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = _raw(env, name)
    if raw is None:
        return default
    if raw not in choices:
        raise ConfigError(f"{name}={raw!r} must be one of {', '.join(choices)}")
    return raw


def _optional_int(env: Mapping[str, str], name: str, *, minimum: int) -> int | None:
    return None if _raw(env, name) is None else _int(env, name, minimum, minimum=minimum)


def _float(env: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    value = _raw(env, name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ConfigError(f"{name}={value!r} must be a finite number")
    if number < minimum:
        raise ConfigError(f"{name}={value!r} must be >= {minimum:g}")
    return number


def env_flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    """A 1/0 (true/false, yes/no, on/off) setting; ConfigError naming it otherwise. Public: serving/auth.py and
    serving/webapp.py read their own flags with it."""
    value = env.get(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{name}={value!r} must be 1 or 0 (true/false, yes/no, on/off)")


def _factory(env: Mapping[str, str], name: str) -> str | None:
    value = _raw(env, name)
    if value is None:
        return None
    module, sep, attribute = value.partition(":")
    if not sep or not module or not attribute:
        raise ConfigError(f"{name}={value!r} must look like 'package.module:callable'")
    return value


def _database_url(env: Mapping[str, str], name: str) -> str | None:
    value = _raw(env, name)
    if value is None:
        return None
    if not value.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"{name} must be a postgresql:// URL (unset it to use the embedded SQLite store)")
    return value


def visible_gpu_count(env: Mapping[str, str]) -> int:
    """GPUs this server may use, without importing torch (the BentoML arbiter reads this): CUDA_VISIBLE_DEVICES
    when set, else the /dev/nvidiaN device files; at least 1 (one CPU worker)."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
        count = 0
        for entry in entries:
            if entry.startswith("-"):  # CUDA stops enumerating at the first invalid index
                break
            count += 1
        return max(1, count)
    return max(1, sum(1 for device in Path("/dev").glob("nvidia[0-9]*") if device.name[6:].isdigit()))
