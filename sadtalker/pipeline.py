"""Portrait + speech -> finished mp4: the stages chained, models loaded once, frames streamed to the encoder.

    talker = SadTalker("checkpoints", device="cuda")
    talker.generate("face.png", "speech.wav", "output/clip.mp4", preset="full")

Data flow (one module per stage): media (decode inputs) -> face (crop, align, 3DMM) -> audio (mel windows)
-> motion (expression, pose, blink) -> render (keypoints, warping, generator) -> compose (paste-back,
enhancer) -> video (encode + mux).  Rendering, composing and encoding run chunk by chunk, so memory does not
grow with the audio length.

Stopping: the progress callback is called between frames (after each render batch, before each next one, between
the enhancer's faces, and as the encoder writes each batch); raising from it stops the job there, within one
frame's (or one face's) time, leaving no partial file (``sadtalker.contracts.ProgressCallback``).
"""

from __future__ import annotations

import itertools
import logging
import random
import secrets
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from sadtalker.audio import AudioFeatures, compute_audio_features
from sadtalker.compose.paste import PasteBox, aspect_resize, paste_frame
from sadtalker.contracts import (
    CROP_COEFFS,
    FPS,
    FULL_COEFFS,
    SAMPLES_PER_FRAME,
    ProgressCallback,
    ProgressReport,
    StopCheck,
    check_landmarks,
)
from sadtalker.errors import CompileUnavailableError, InputError
from sadtalker.face.detect import FaceLandmarker
from sadtalker.face.reference import ReferenceVideo, reference_coefficients
from sadtalker.face.source import SourceFace, prepare_source
from sadtalker.feeder import BackgroundFeeder
from sadtalker.media import load_audio, load_image
from sadtalker.models import SizeModels, load_size_models
from sadtalker.motion.coefficients import MotionResult, predict_motion
from sadtalker.motion.freeview import pose_override
from sadtalker.motion.reference import apply_reference_pose, reference_expression
from sadtalker.options import GenerateOptions, Preset
from sadtalker.render.accel import (
    Precision,
    check_precision,
    compile_toolchain_problem,
    configure_inductor,
    default_render_batch,
)
from sadtalker.render.renderer import PoseOverride, Renderer, frames_to_uint8
from sadtalker.render.windows import RenderSemantics, build_semantics

logger = logging.getLogger(__name__)

# Share of the whole job's time each stage takes on a GPU (rendering and enhancing dominate); used to report a
# single monotonic progress fraction.
STAGES: dict[str, float] = {"inputs": 0.02, "face": 0.03, "motion": 0.03, "render": 0.92}
DEFAULT_MAX_AUDIO_SECONDS = 600.0


# Where each stage starts on the job's 0..1 progress scale.
_STAGE_START = dict(zip(STAGES, itertools.accumulate(STAGES.values(), initial=0.0), strict=False))


@dataclass
class _Progress:
    """One job's progress reports; also its stop checks (the callback raises to stop the job).

    Called from the rendering thread (stages, stop checks) and the encoder's thread (frames written): the lock
    makes the callback see one call at a time, and the frame count and its report change together.
    """

    callback: ProgressCallback | None
    current: str | None = None
    since: float = 0.0
    frames_written: int = 0
    frames_total: int | None = None
    last: ProgressReport | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def stage(self, name: str, within: float = 0.0) -> None:
        """Report ``within`` (0..1) of stage ``name`` done, as a fraction of the whole job; log stage changes."""
        if name != self.current:
            now = time.perf_counter()
            if self.current is not None:
                logger.info("stage %s done in %.2f s", self.current, now - self.since)
            self.current, self.since = name, now
        with self._lock:
            self._send(name, within)

    def render_started(self, frames_total: int) -> None:
        self.frames_total = frames_total
        self.stage("render", 0.0)

    def written(self, count: int) -> None:
        """``count`` more frames were written to the encoder (called on the encoder's thread)."""
        with self._lock:
            self.frames_written += count
            self._send("render", self.frames_written / (self.frames_total or self.frames_written))

    def check(self) -> None:
        """A stop check between frames or faces: the last report again (the callback raises to stop)."""
        with self._lock:
            if self.callback is not None and self.last is not None:
                self.callback(self.last)

    def _send(self, name: str, within: float) -> None:
        if self.callback is None:
            return
        done = _STAGE_START[name] + STAGES[name] * min(max(within, 0.0), 1.0)
        self.last = ProgressReport(name, round(done, 4), self.frames_written, self.frames_total)
        self.callback(self.last)


def resolve_options(
    preset: Preset | None,
    options: GenerateOptions | None,
    size: int = 256,
    controls: Mapping[str, object] | None = None,
) -> GenerateOptions:
    """Explicit options, or a preset rendered at ``size``; then every control in ``controls`` that is not None
    (motion controls passed by keyword, as the service does) replaces that field (validated by GenerateOptions)."""
    if options is not None and preset is not None:
        raise ValueError("give either preset or options, not both")
    resolved = options if options is not None else GenerateOptions.preset(preset or "crop", size=size)
    given = {name: value for name, value in (controls or {}).items() if value is not None}
    return replace(resolved, **given) if given else resolved  # type: ignore[arg-type]


class SadTalker:
    """Every model loaded once; ``generate`` renders one video per call (not thread-safe: one caller at a time)."""

    def __init__(
        self,
        checkpoint_dir: str | Path,
        device: str | torch.device = "cuda",
        *,
        sizes: Iterable[int] = (256,),
        enhancer: bool = True,
        enhancer_upscale: int = 2,
        enhancer_max_faces: int | None = None,
        face_detection: bool = True,
        max_audio_seconds: float = DEFAULT_MAX_AUDIO_SECONDS,
        precision: Precision = "exact",
        compile: bool = False,  # noqa: A002  (the torch.compile switch; the name callers know)
    ) -> None:
        """Load every network once.

        ``precision``: default of jobs whose options leave it unset: "exact" (float32, the reference's
        tolerances) or "fast" (bf16 on CPU / fp16 on CUDA where safe; see sadtalker.render.accel).
        ``compile``: compile the per-frame networks (render, GFPGAN, ParseNet) for ``precision`` now, at load
        (minutes on a CPU; kernels are cached in TORCHINDUCTOR_CACHE_DIR); jobs never compile.  The CLI and the
        service turn it on; the library default is off so tests can build pipelines cheaply.

        ``enhancer_upscale`` 2 is what the original does (GFPGANer(upscale=2): enhanced videos are twice the
        rendered size); ``enhancer_max_faces`` caps the faces GFPGAN restores per frame (largest first; None =
        all, as the original).
        """
        self.checkpoint_dir = Path(checkpoint_dir)
        self.device = torch.device(device)
        self.max_audio_seconds = max_audio_seconds
        self.precision: Precision = check_precision(precision)
        self.compiled = compile
        self._render_batches: dict[int, int] = {}  # default frames per render batch, per size (fixed once)
        if compile and (problem := compile_toolchain_problem()):
            # Before the models load: otherwise the first compilation fails minutes later with a C++ traceback.
            raise CompileUnavailableError(f"compile=True but {problem}; or load with compile=False (eager, slower)")
        started = time.perf_counter()
        self.models: dict[int, SizeModels] = {
            size: load_size_models(self.checkpoint_dir, size, self.device, (CROP_COEFFS, FULL_COEFFS))
            for size in sorted(set(sizes))
        }
        self.landmarker = FaceLandmarker(self.checkpoint_dir, self.device) if face_detection else None
        self.enhancer = None
        if enhancer:
            from sadtalker.compose.enhance import FaceEnhancer

            self.enhancer = FaceEnhancer(
                self.checkpoint_dir,
                self.device,
                upscale=enhancer_upscale,
                max_faces=enhancer_max_faces,
                detector=self.landmarker.detector if self.landmarker is not None else None,  # share RetinaFace
            )
        # librosa's first STFT compiles numba helpers: ~30 s where numba has no cache on disk (a fresh container),
        # paid here at load rather than by the first job.
        compute_audio_features(np.zeros(SAMPLES_PER_FRAME, dtype=np.float32))
        self.compile_seconds = self._compile() if compile else 0.0
        self.load_seconds = time.perf_counter() - started
        logger.info(
            "SadTalker ready on %s in %.1f s (sizes %s, enhancer %s, face detection %s)",
            self.device,
            self.load_seconds,
            sorted(self.models),
            enhancer,
            face_detection,
        )

    def _compile(self) -> float:
        """Compile every per-frame network for this instance's precision and the render batch it will use."""
        configure_inductor()
        started = time.perf_counter()
        for size, models in self.models.items():
            # Fixed now: free memory shrinks once graphs are built, and jobs must use the compiled batch.
            self._render_batches[size] = default_render_batch(self.device, size)
            first: Renderer | None = None
            for renderer in models.renderers.values():
                if first is not None and renderer.generator is first.generator:
                    renderer.share_compiled(first)  # crop and full renderers share the generator
                    continue
                first = renderer
                renderer.compile(size, self._render_batches[size], self.precision)
        if self.enhancer is not None:
            self.enhancer.compile(self.precision)
        seconds = time.perf_counter() - started
        logger.info("compiled the per-frame networks (%s) in %.1f s", self.precision, seconds)
        return seconds

    def job_precision(self, options: GenerateOptions) -> Precision:
        """The job's precision: its own, else this instance's default."""
        return options.precision or self.precision

    def render_batch(self, options: GenerateOptions) -> int:
        """Frames per render batch: the job's ``batch_size``, else the device's best (1 on CPU, more on CUDA)."""
        if options.batch_size:
            return options.batch_size
        if options.size not in self._render_batches:
            self._render_batches[options.size] = default_render_batch(self.device, options.size)
        return self._render_batches[options.size]

    @property
    def default_size(self) -> int:
        """The render size presets use: 256 when loaded, else the loaded one."""
        return 256 if 256 in self.models else min(self.models)

    # -- stages -------------------------------------------------------------------------------------------------

    def _size_models(self, options: GenerateOptions) -> SizeModels:
        try:
            return self.models[options.size]
        except KeyError:
            raise InputError(
                f"size {options.size} is not loaded (loaded: {sorted(self.models)})", field="size"
            ) from None

    def prepare_face(
        self, image: np.ndarray, options: GenerateOptions, landmarks: np.ndarray | None, image_name: str
    ) -> SourceFace:
        models = self._size_models(options)
        if landmarks is not None:
            try:
                landmarks = check_landmarks(landmarks)
            except ValueError as exc:
                raise InputError(str(exc), field="landmarks") from None
        return prepare_source(
            image,
            preprocess=options.preprocess,
            size=options.size,
            recon_net=models.recon,
            landmarker=self.landmarker,
            landmarks=landmarks,
            image_name=image_name,
        )

    def reference_videos(
        self,
        options: GenerateOptions,
        num_frames: int | None,
        landmarks: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, ReferenceVideo]:
        """3DMM coefficients of the ``ref_eyeblink`` / ``ref_pose`` videos (one pass when both name one file).

        Only the first ``num_frames`` frames are decoded (None: all); ``landmarks`` maps a field name to
        injected (N, 68, 2) landmarks per frame of that video.
        """
        models = self._size_models(options)
        videos: dict[str, ReferenceVideo] = {}
        for field in ("ref_eyeblink", "ref_pose"):
            path = getattr(options, field)
            if path is None:
                continue
            same = next((v for v in videos.values() if v.path == path), None)
            if same is not None and (landmarks or {}).get(field) is None:
                videos[field] = same  # the original also reuses ref_eyeblink's coefficients when ref_pose == it
                continue
            videos[field] = reference_coefficients(
                path,
                preprocess=options.preprocess,
                recon_net=models.recon,
                landmarker=self.landmarker,
                landmarks=(landmarks or {}).get(field),
                max_frames=num_frames,
                field=field,
            )
            logger.info("%s: %d frames of %s", field, videos[field].num_frames, path.name)
        return videos

    def predict_motion(
        self,
        features: AudioFeatures,
        face: SourceFace,
        options: GenerateOptions,
        seed: int,
        *,
        blink_ratio: np.ndarray | None = None,
        pose_noise: np.ndarray | None = None,
        references: Mapping[str, ReferenceVideo] | None = None,
    ) -> MotionResult:
        """Expression and pose per frame; blinks and pose noise are drawn from ``seed`` unless given.

        ``references`` (from :meth:`reference_videos`): ``ref_eyeblink`` drives audio2exp's reference
        expression, ``ref_pose`` adds its relative pose to the smoothed prediction (``coefficients``).
        """
        models = self._size_models(options)
        references = references or {}
        eyeblink, ref_pose = references.get("ref_eyeblink"), references.get("ref_pose")
        motion = predict_motion(
            features,
            face.source_coeff,
            pose_style=options.pose_style,
            audio2exp=models.audio2exp,
            audio2pose=models.audio2pose,
            # Eyes blink in still mode too: the original's current get_data zeroes blinks only when use_blink is
            # off (never, from inference.py), and its golden still case records a non-zero blink ratio.
            still=False,
            blink_ratio=blink_ratio,
            blink_rng=random.Random(seed),
            pose_noise=pose_noise,
            generator=torch.Generator().manual_seed(seed),
            ref_expression=None if eyeblink is None else reference_expression(eyeblink.coeff_73, features.num_frames),
        )
        if ref_pose is not None:
            motion = replace(motion, coefficients=apply_reference_pose(motion.coefficients, ref_pose.coeff_73))
        return motion

    def semantics(self, motion: MotionResult, face: SourceFace, options: GenerateOptions) -> RenderSemantics:
        return build_semantics(
            torch.from_numpy(motion.coefficients),
            torch.from_numpy(face.source_coeff),
            full=options.coeff_nc == FULL_COEFFS,
            still=options.still,
            expression_scale=options.expression_scale,
        )

    def renderer(self, options: GenerateOptions) -> Renderer:
        return self._size_models(options).renderers[options.coeff_nc]

    def pose_override(self, options: GenerateOptions, num_frames: int) -> PoseOverride | None:
        """Free-view angles (input_yaw/pitch/roll) over a clip of ``num_frames`` frames, or None."""
        return pose_override(num_frames, yaw=options.input_yaw, pitch=options.input_pitch, roll=options.input_roll)

    def render_frames(
        self,
        face: SourceFace,
        semantics: RenderSemantics,
        options: GenerateOptions,
        angles: PoseOverride | None = None,
    ) -> Iterator[np.ndarray]:
        """Rendered crops as (B, S, S, 3) uint8 batches, in order; ``angles`` replace the predicted head angles."""
        image = torch.from_numpy(face.crop_image).permute(2, 0, 1).unsqueeze(0).to(torch.float32) / 255.0
        renderer = self.renderer(options)
        batches = renderer.render(
            image,
            semantics.source,
            semantics.target,
            self.render_batch(options),
            precision=self.job_precision(options),
            pose_override=angles,
        )
        for batch in batches:
            yield frames_to_uint8(batch).cpu().numpy()

    def compose(
        self,
        frames: np.ndarray,
        image: np.ndarray,
        face: SourceFace,
        options: GenerateOptions,
        generator: torch.Generator | None = None,
        check: StopCheck | None = None,
    ) -> np.ndarray:
        """Rendered crops -> output frames: aspect resize, paste into the photo (full), then enhance.

        ``check`` is called between frames and between the enhancer's faces; it raises to stop.
        """
        out = aspect_resize(frames, face.crop.crop_info_size_wh)
        if options.pastes_back:  # full, extfull (the border box)
            box = PasteBox(*face.crop.paste_box_xyxy)
            out = np.stack([paste_frame(frame, image, box) for frame in out])
        if options.enhancer == "gfpgan":
            if self.enhancer is None:
                raise InputError("the gfpgan enhancer is not loaded on this instance", field="enhancer")
            out = self.enhancer.enhance(out, generator=generator, precision=self.job_precision(options), check=check)
        return out

    # -- whole job ----------------------------------------------------------------------------------------------

    def generate(
        self,
        source_image: str | Path,
        driven_audio: str | Path,
        output_path: str | Path,
        *,
        preset: Preset | None = None,
        options: GenerateOptions | None = None,
        landmarks: np.ndarray | None = None,
        progress: ProgressCallback | None = None,
        temp_dir: str | Path | None = None,
        reference_landmarks: Mapping[str, np.ndarray] | None = None,
        ref_eyeblink: str | Path | None = None,
        ref_pose: str | Path | None = None,
        input_yaw: Sequence[float] | None = None,
        input_pitch: Sequence[float] | None = None,
        input_roll: Sequence[float] | None = None,
    ) -> Path:
        """Render one talking-head video to ``output_path`` (written under a temporary name, then renamed).

        ``reference_landmarks`` maps ``ref_eyeblink`` / ``ref_pose`` to (N, 68, 2) landmarks per frame of that
        video (skips detection there, like ``landmarks`` for the photo).

        ``ref_eyeblink`` ... ``input_roll``: the motion controls of `GenerateOptions` given by keyword (how the
        service's request passes them); each one given replaces that field of ``options`` / the preset.

        ``progress`` gets a `ProgressReport` at each stage and between frames (see
        `sadtalker.contracts.ProgressCallback`); whatever it raises stops the render there and propagates.

        Raises ``InputError`` subclasses (with ``.field``) for unusable inputs and ``RenderError`` when
        encoding fails; no partial output file is left behind either way.
        """
        from sadtalker.video import VideoWriter

        controls = {"ref_eyeblink": ref_eyeblink, "ref_pose": ref_pose, "input_yaw": input_yaw,
                    "input_pitch": input_pitch, "input_roll": input_roll}  # fmt: skip
        options = resolve_options(preset, options, size=self.default_size, controls=controls)
        seed = options.seed if options.seed is not None else secrets.randbits(31)
        output_path = Path(output_path)
        tracker = _Progress(progress)
        started = time.perf_counter()

        tracker.stage("inputs", 0.0)
        image = load_image(source_image)
        wav = load_audio(driven_audio, max_seconds=self.max_audio_seconds)
        features = compute_audio_features(wav)
        tracker.stage("face", 0.0)
        face = self.prepare_face(image, options, landmarks, Path(source_image).name)
        references = self.reference_videos(options, features.num_frames, reference_landmarks)
        tracker.stage("motion", 0.0)
        motion = self.predict_motion(features, face, options, seed, references=references)
        semantics = self.semantics(motion, face, options)
        angles = self.pose_override(options, semantics.num_frames)  # interpolated over the whole clip
        if options.max_frames is not None and options.max_frames < semantics.num_frames:
            semantics = RenderSemantics(semantics.source, semantics.target[: options.max_frames])
            if angles is not None:
                angles = angles.select(slice(0, options.max_frames), torch.device("cpu"))
        total = semantics.num_frames
        tracker.render_started(total)
        logger.info("rendering %d frames (%.2f s of audio) %s seed=%d", total, total / FPS, options, seed)
        enhancer_noise = torch.Generator().manual_seed(seed)  # GFPGAN's decoder noise, as the original draws it
        with VideoWriter(output_path, audio=features.wav, num_frames=total, fps=FPS, temp_dir=temp_dir) as writer:

            def encode(frames: np.ndarray) -> None:
                writer.write(frames)
                tracker.written(len(frames))  # counted once ffmpeg took them

            # The encoder is fed from a background thread: the next batch renders while ffmpeg takes this one.
            with BackgroundFeeder(encode, name="encoder") as encoder:
                for frames in self.render_frames(face, semantics, options, angles):
                    tracker.check()  # a stop requested while this batch rendered
                    encoder.put(self.compose(frames, image, face, options, enhancer_noise, check=tracker.check))
                    tracker.check()  # ... or while it was composed: before the next batch renders
        logger.info("stage render done in %.2f s", time.perf_counter() - tracker.since)
        logger.info(
            "wrote %s (%d frames) in %.1f s", output_path, tracker.frames_written, time.perf_counter() - started
        )
        return output_path
