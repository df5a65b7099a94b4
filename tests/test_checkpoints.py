"""Checkpoint manifest, structural verification and resumable download (the sadtalker/checkpoints package).

Download tests run against a local HTTP server on 127.0.0.1 serving small synthetic files; no real network.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sadtalker.checkpoints import cli
from sadtalker.checkpoints import download as dl
from sadtalker.checkpoints import verify as vf
from sadtalker.checkpoints.download import DownloadError, download_checkpoints
from sadtalker.checkpoints.files import checkpoint_paths
from sadtalker.checkpoints.manifest import (
    MANIFEST_PATH,
    CheckpointFile,
    Layout,
    Manifest,
    TensorSpec,
    default_manifest,
)
from sadtalker.checkpoints.verify import require_checkpoints, verify_checkpoints, verify_file
from sadtalker.contracts import CROP_COEFFS, FULL_COEFFS
from sadtalker.errors import CheckpointError

ST256 = "SadTalker_V0.0.2_256.safetensors"
MAPPING_CROP = "mapping_00229-model.pth.tar"


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------


def _specs(state: Mapping[str, torch.Tensor]) -> dict[str, TensorSpec]:
    return {k: TensorSpec(tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()}


def _tiny_state(seed: int, channels: int = 8) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(channels, 3, 3, 3, generator=gen),
        "conv.bias": torch.randn(channels, generator=gen),
        "bn.running_mean": torch.zeros(channels),
        "bn.num_batches_tracked": torch.tensor(0, dtype=torch.int64),
        "fc.weight": torch.randn(64, 1024, generator=gen),  # 256 KiB: big enough to cut mid-transfer
    }


def _link_dir(source: Path, target: Path, *, skip: tuple[str, ...] = ()) -> Path:
    """A checkpoint dir whose files are symlinks to ``source`` (no copies of the 725 MB file)."""
    target.mkdir(parents=True, exist_ok=True)
    for spec in default_manifest().files:
        if spec.name not in skip and (source / spec.name).exists():
            (target / spec.name).symlink_to((source / spec.name).resolve())
    return target


def _rewrite_safetensors_header(source: Path, target: Path, edit: Callable[[dict], None]) -> None:
    """Copy of ``source`` with an edited header; the data region is a sparse hole (verify never reads it)."""
    with source.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    data_len = max(entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__")
    edit(header)
    raw = json.dumps(header).encode()
    with target.open("wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        handle.truncate(8 + len(raw) + data_len)


# ----------------------------------------------------------------------------------------------------------------
# manifest
# ----------------------------------------------------------------------------------------------------------------


def test_packaged_manifest_lists_every_official_file() -> None:
    manifest = default_manifest()
    names = [spec.name for spec in manifest.files]
    assert names == [
        ST256, "SadTalker_V0.0.2_512.safetensors", MAPPING_CROP, "mapping_00109-model.pth.tar",
        "alignment_WFLW_4HG.pth", "detection_Resnet50_Final.pth", "parsing_parsenet.pth", "GFPGANv1.4.pth",
    ]  # fmt: skip
    for spec in manifest.files:
        assert spec.url.startswith("https://github.com/") and spec.url.endswith("/" + spec.name)
        assert spec.sha256 is None  # no published digest we could verify (see checkpoints/README.md)
        assert spec.layout.tensors and spec.approx_bytes >= spec.layout.tensor_bytes
    st = manifest.file(ST256).layout
    assert manifest.file("SadTalker_V0.0.2_512.safetensors").layout is st
    assert len(st.tensors) == 1305 and st.tensor_bytes == 724_908_512
    assert sum(spec.dtype == "int64" for spec in st.tensors.values()) == 158
    assert st.tensors["kp_extractor.down.weight"] == TensorSpec((3, 1, 13, 13), "float32")
    assert manifest.file(MAPPING_CROP).layout.tensors["first.0.weight"].shape == (1024, 70, 7)
    assert manifest.file("mapping_00109-model.pth.tar").layout.tensors["first.0.weight"].shape == (1024, 73, 7)
    assert manifest.file("GFPGANv1.4.pth").layout.state_dict_keys == ("params_ema", "params")
    assert MANIFEST_PATH.stat().st_size < 300_000


def test_manifest_selection_by_size_and_enhancer() -> None:
    manifest = default_manifest()
    names_256 = {spec.name for spec in manifest.select(["256"])}
    assert ST256 in names_256 and "SadTalker_V0.0.2_512.safetensors" not in names_256
    assert len(names_256) == 7
    assert len(manifest.select("all")) == 8
    lean = {spec.name for spec in manifest.select([512], include_enhancer=False)}
    assert lean == {
        "SadTalker_V0.0.2_512.safetensors", MAPPING_CROP, "mapping_00109-model.pth.tar",
        "alignment_WFLW_4HG.pth", "detection_Resnet50_Final.pth",
    }  # fmt: skip
    with pytest.raises(ValueError, match="unknown size"):
        manifest.select(["1024"])


def test_manifest_matches_reference_layout(reference_dir: Path) -> None:
    """The packaged SadTalker layouts equal the reference kit's checkpoint_layout.json, key for key."""
    reference = json.loads((reference_dir / "checkpoint_layout.json").read_text())
    manifest = default_manifest()
    for name, entry in reference["files"].items():
        expected = {t["key"]: TensorSpec(tuple(t["shape"]), t["dtype"]) for t in entry["tensors"]}
        assert dict(manifest.file(name).layout.tensors) == expected, name


def test_tensor_spec_round_trip() -> None:
    assert TensorSpec.parse("float32[64,3,3,3]") == TensorSpec((64, 3, 3, 3), "float32")
    assert TensorSpec.parse("int64[]") == TensorSpec((), "int64")
    assert str(TensorSpec((), "int64")) == "int64[]"
    with pytest.raises(ValueError):
        TensorSpec.parse("float32(3)")


def test_checkpoint_paths(tmp_path: Path) -> None:
    paths = checkpoint_paths(tmp_path, 512)
    assert paths.size == "512" and paths.sadtalker == tmp_path / "SadTalker_V0.0.2_512.safetensors"
    assert paths.mapping_for(CROP_COEFFS) == tmp_path / MAPPING_CROP
    assert paths.mapping_for(FULL_COEFFS) == tmp_path / "mapping_00109-model.pth.tar"
    names = {spec.name for spec in default_manifest().select("512")}
    fields = [
        paths.sadtalker,
        paths.mapping_crop,
        paths.mapping_full,
        paths.face_alignment,
        paths.face_detection,
        paths.face_parsing,
        paths.gfpgan,
    ]
    assert {p.name for p in fields} == names


# ----------------------------------------------------------------------------------------------------------------
# verification of the synthetic files in the official formats
# ----------------------------------------------------------------------------------------------------------------


def test_verify_accepts_synthetic_checkpoints(synthetic_checkpoints: Path) -> None:
    assert verify_checkpoints(synthetic_checkpoints, ("256",)) == []
    require_checkpoints(synthetic_checkpoints, ("256",))
    assert cli.main(["verify", "--dir", str(synthetic_checkpoints), "--size", "256"]) == 0


def test_verify_names_a_changed_safetensors_shape(synthetic_checkpoints: Path, tmp_path: Path) -> None:
    root = _link_dir(synthetic_checkpoints, tmp_path / "ckpt", skip=(ST256,))
    key = "generator.first.conv.weight"

    def permute(header: dict) -> None:  # same element count, so the data offsets stay valid
        header[key]["shape"] = list(reversed(header[key]["shape"]))

    _rewrite_safetensors_header(synthetic_checkpoints / ST256, root / ST256, permute)
    problems = verify_checkpoints(root, ("256",))
    assert [(p.file, p.kind, p.key) for p in problems] == [(ST256, "wrong_shape", key)]
    official = list(default_manifest().file(ST256).layout.tensors[key].shape)
    assert f"shape {official[::-1]}, expected {official}" in problems[0].message
    with pytest.raises(CheckpointError) as info:
        require_checkpoints(root, ("256",))
    message = str(info.value)
    assert key in message and ST256 in message and "python -m sadtalker.checkpoints download" in message


def test_verify_reports_dtype_missing_and_unexpected_safetensors_keys(synthetic_checkpoints: Path, tmp_path: Path):
    spec = default_manifest().file(ST256)

    def edit(header: dict) -> None:
        header["audio2exp.mapping1.bias"]["dtype"] = "F16"  # 64 floats -> half the bytes; offsets then disagree
        header["audio2exp.mapping1.bias"]["data_offsets"][1] -= 128
        header["he_estimator.fc.weight"] = header.pop("generator.third.conv.weight")

    _rewrite_safetensors_header(synthetic_checkpoints / ST256, tmp_path / ST256, edit)
    kinds = {(p.kind, p.key) for p in verify_file(tmp_path / ST256, spec)}
    assert kinds == {
        ("wrong_dtype", "audio2exp.mapping1.bias"),
        ("missing_key", "generator.third.conv.weight"),
        ("unexpected_key", "he_estimator.fc.weight"),
    }


def test_verify_rejects_truncated_safetensors(synthetic_checkpoints: Path, tmp_path: Path) -> None:
    spec = default_manifest().file(ST256)
    _rewrite_safetensors_header(synthetic_checkpoints / ST256, tmp_path / ST256, lambda header: None)
    assert verify_file(tmp_path / ST256, spec) == []  # the sparse copy itself is structurally fine
    with (tmp_path / ST256).open("r+b") as handle:
        handle.truncate(handle.seek(0, 2) - 1)
    (problem,) = verify_file(tmp_path / ST256, spec)
    assert problem.kind == "unreadable" and "truncated" in problem.message
    (tmp_path / ST256).write_bytes(b"<html>rate limited</html>")
    (problem,) = verify_file(tmp_path / ST256, spec)
    assert problem.kind == "unreadable" and "not a safetensors file" in problem.message


def test_verify_names_problems_in_a_mapping_file(synthetic_checkpoints: Path, tmp_path: Path) -> None:
    root = _link_dir(synthetic_checkpoints, tmp_path / "ckpt", skip=(MAPPING_CROP,))
    original = torch.load(synthetic_checkpoints / MAPPING_CROP, weights_only=True, mmap=True)
    mapping = dict(original["mapping"])
    mapping["fc_t.weight"] = torch.zeros(4, 1024)  # official: [3, 1024]
    mapping["fc_exp.bias"] = mapping["fc_exp.bias"].double()
    del mapping["fc_yaw.bias"]
    torch.save({"mapping": mapping}, root / MAPPING_CROP)  # and no 'epoch'
    problems = verify_checkpoints(root, ("256",))
    assert {(p.file, p.kind, p.key) for p in problems} == {
        (MAPPING_CROP, "missing_key", "epoch"),
        (MAPPING_CROP, "wrong_shape", "fc_t.weight"),
        (MAPPING_CROP, "wrong_dtype", "fc_exp.bias"),
        (MAPPING_CROP, "missing_key", "fc_yaw.bias"),
    }
    assert cli.main(["verify", "--dir", str(root), "--size", "256"]) == 1


def test_verify_names_a_missing_file(synthetic_checkpoints: Path, tmp_path: Path) -> None:
    root = _link_dir(synthetic_checkpoints, tmp_path / "ckpt", skip=("GFPGANv1.4.pth",))
    problems = verify_checkpoints(root, ("256",))
    assert [(p.file, p.kind) for p in problems] == [("GFPGANv1.4.pth", "missing_file")]
    assert verify_checkpoints(root, ("256",), include_enhancer=False) == []
    with pytest.raises(CheckpointError, match=r"GFPGANv1\.4\.pth: 1 problem"):
        require_checkpoints(root, ("256",))


def test_torch_container_rules(tmp_path: Path) -> None:
    """'module.' prefixes stripped, optional BN counters, params_ema -> params fallback, wrong wrappers named."""
    state = _tiny_state(1)
    optional = ("num_batches_tracked",)
    plain = Layout("plain", "torch", _specs(state), strip_key_prefix="module.", optional_key_suffixes=optional)
    spec = CheckpointFile("x.pth", "http://unused/x.pth", plain, ("256",), "face", 1)
    path = tmp_path / "x.pth"
    torch.save({f"module.{k}": v for k, v in state.items() if not k.endswith("num_batches_tracked")}, path)
    assert verify_file(path, spec) == []

    wrapped = replace(spec, layout=Layout("w", "torch", _specs(state), state_dict_keys=("params_ema", "params")))
    torch.save({"params": state}, path)
    assert verify_file(path, wrapped) == []
    torch.save({"weights": state}, path)
    (problem,) = verify_file(path, wrapped)
    assert (problem.kind, problem.key) == ("missing_key", "params_ema or params")

    torch.save({**state, "note": "hello"}, path)  # a non-tensor entry in a plain state dict
    (problem,) = verify_file(path, replace(spec, layout=Layout("p", "torch", _specs(state))))
    assert (problem.kind, problem.key) == ("unexpected_key", "note")


def test_sha256_checked_when_known(tmp_path: Path) -> None:
    state = _tiny_state(2)
    path = tmp_path / "a.safetensors"
    save_file(state, str(path))
    spec = CheckpointFile(
        "a.safetensors",
        "http://unused/a",
        Layout("a", "safetensors", _specs(state)),
        ("256",),
        "face",
        1,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
    )
    assert verify_file(path, spec) == []
    (problem,) = verify_file(path, replace(spec, sha256="0" * 64))
    assert problem.kind == "checksum"


# ----------------------------------------------------------------------------------------------------------------
# download against a local server
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    cut_first: set[str] = field(default_factory=set)  # close the connection halfway on the first request
    fail_first: dict[str, int] = field(default_factory=dict)  # answer the first request with this HTTP status
    ignore_range: bool = False
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (name, Range header)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib signature)
        pass

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        name = self.path.lstrip("/")
        range_header = self.headers.get("Range")
        with state.lock:
            state.requests.append((name, range_header))
            first = sum(n == name for n, _ in state.requests) == 1
        if name not in state.files:
            self.send_error(404)
            return
        if first and name in state.fail_first:
            self.send_error(state.fail_first[name])
            return
        body = state.files[name]
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if match and not state.ignore_range:
            start = int(match.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if first and name in state.cut_first:
            self.wfile.write(body[start : len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body[start:])


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = ServerState()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.state  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Manifest, dict[str, bytes]]:
    """A 2-file manifest (a safetensors file and a wrapped torch file) and the files' bytes."""
    src = tmp_path / "src"
    src.mkdir()
    state_a, state_b = _tiny_state(3), _tiny_state(4, channels=4)
    save_file(state_a, str(src / "a.safetensors"))
    torch.save({"state_dict": state_b, "epoch": 7}, src / "b.pth")
    manifest = Manifest(
        (
            CheckpointFile(
                "a.safetensors",
                "http://invalid.test/a",
                Layout("a", "safetensors", _specs(state_a)),
                ("256",),
                "sadtalker",
                300_000,
            ),
            CheckpointFile(
                "b.pth",
                "http://invalid.test/b",
                Layout("b", "torch", _specs(state_b), ("state_dict",), ("epoch",)),
                ("256",),
                "face",
                300_000,
            ),
        )
    )
    return manifest, {name: (src / name).read_bytes() for name in ("a.safetensors", "b.pth")}


def _download(root: Path, manifest: Manifest, base: str, **kwargs: object) -> list[dl.DownloadResult]:
    return download_checkpoints(root, ("256",), manifest=manifest, mirror=base, progress=False, backoff=0, **kwargs)


def test_download_all_files(server, tiny, tmp_path: Path) -> None:
    base, state = server
    manifest, files = tiny
    state.files.update(files)
    root = tmp_path / "out"
    results = _download(root, manifest, base)
    assert [(r.name, r.status, r.bytes_fetched) for r in results] == [
        ("a.safetensors", "downloaded", len(files["a.safetensors"])),
        ("b.pth", "downloaded", len(files["b.pth"])),
    ]
    assert all((root / name).read_bytes() == body for name, body in files.items())
    assert not list(root.glob("*.part"))
    assert verify_checkpoints(root, ("256",), manifest=manifest) == []
    assert state.requests == [("a.safetensors", None), ("b.pth", None)]


def test_download_resumes_an_interrupted_transfer(server, tiny, tmp_path: Path) -> None:
    base, state = server
    manifest, files = tiny
    state.files.update(files)
    state.cut_first.add("a.safetensors")
    root = tmp_path / "out"
    _download(root, manifest, base)
    half = len(files["a.safetensors"]) // 2
    assert [r for r in state.requests if r[0] == "a.safetensors"] == [
        ("a.safetensors", None),
        ("a.safetensors", f"bytes={half}-"),
    ]
    assert (root / "a.safetensors").read_bytes() == files["a.safetensors"]


def test_download_resumes_a_part_file_left_by_an_earlier_run(server, tiny, tmp_path: Path) -> None:
    base, state = server
    manifest, files = tiny
    state.files.update(files)
    root = tmp_path / "out"
    root.mkdir()
    (root / "b.pth.part").write_bytes(files["b.pth"][:1000])
    results = _download(root, manifest, base)
    assert ("b.pth", "bytes=1000-") in state.requests
    assert results[1].bytes_fetched == len(files["b.pth"]) - 1000
    assert (root / "b.pth").read_bytes() == files["b.pth"]


def test_download_finishes_a_complete_part_file(server, tiny, tmp_path: Path) -> None:
    """A run that died between the last byte and the rename: the server answers 416, the .part is verified."""
    base, state = server
    manifest, files = tiny
    state.files.update(files)
    root = tmp_path / "out"
    root.mkdir()
    (root / "a.safetensors.part").write_bytes(files["a.safetensors"])
    results = _download(root, manifest, base)
    assert (results[0].status, results[0].bytes_fetched) == ("downloaded", 0)
    assert ("a.safetensors", f"bytes={len(files['a.safetensors'])}-") in state.requests
    assert (root / "a.safetensors").read_bytes() == files["a.safetensors"]


def test_download_refuses_a_file_another_process_is_writing(server, tiny, tmp_path: Path) -> None:
    base, state = server
    manifest, files = tiny
    state.files.update(files)
    root = tmp_path / "out"
    root.mkdir()
    with dl._locked_part(root / "b.pth.part"):  # a second open file description holding the lock
        with pytest.raises(DownloadError, match="another process is downloading"):
            dl.download_file(manifest.file("b.pth"), root, mirror=base, progress=False, backoff=0)
        assert (root / "b.pth.part").exists()  # the holder's (empty) file is left alone
    assert not (root / "b.pth.part").exists()


def test_download_restarts_when_the_server_ignores_range(server, tiny, tmp_path: Path) -> None:
    base, state = server
    manifest, files = tiny
    state.files.update(files)
    state.ignore_range = True
    root = tmp_path / "out"
    root.mkdir()
    (root / "a.safetensors.part").write_bytes(b"garbage from elsewhere")
    _download(root, manifest, base)
    assert (root / "a.safetensors").read_bytes() == files["a.safetensors"]


def test_download_rejects_a_corrupt_file(server, tiny, tmp_path: Path) -> None:
    base, state = server
    manifest, files = tiny
    wrong = tmp_path / "wrong.pth"
    torch.save({"state_dict": _tiny_state(4, channels=5), "epoch": 7}, wrong)  # conv has 5 channels, not 4
    state.files.update(files, **{"b.pth": wrong.read_bytes()})
    root = tmp_path / "out"
    with pytest.raises(DownloadError) as info:
        _download(root, manifest, base)
    message = str(info.value)
    assert "b.pth" in message and "conv.weight" in message and "1 file(s) failed" in message
    assert not (root / "b.pth").exists() and not (root / "b.pth.part").exists()
    assert (root / "a.safetensors").read_bytes() == files["a.safetensors"]  # the other file still arrived


def test_download_skips_valid_files_and_replaces_invalid_ones(server, tiny, tmp_path: Path) -> None:
    base, state = server
    manifest, files = tiny
    state.files.update(files)
    root = tmp_path / "out"
    root.mkdir()
    (root / "a.safetensors").write_bytes(files["a.safetensors"])
    (root / "b.pth").write_bytes(files["b.pth"][:-10])  # truncated: not a readable zip
    results = _download(root, manifest, base)
    assert [(r.name, r.status) for r in results] == [("a.safetensors", "present"), ("b.pth", "downloaded")]
    assert state.requests == [("b.pth", None)]
    assert (root / "b.pth").read_bytes() == files["b.pth"]


def test_download_retries_transient_errors_but_not_404(server, tiny, tmp_path: Path) -> None:
    base, state = server
    manifest, files = tiny
    state.files.update(files)
    state.fail_first["a.safetensors"] = 503
    root = tmp_path / "out"
    _download(root, manifest, base)
    assert [r for r in state.requests if r[0] == "a.safetensors"] == [("a.safetensors", None)] * 2

    del state.files["b.pth"]
    (root / "b.pth").unlink()
    state.requests.clear()
    with pytest.raises(DownloadError, match=r"b\.pth: HTTP 404"):
        _download(root, manifest, base)
    assert state.requests == [("b.pth", None)]  # a.safetensors present; 404 is final: no retry
    assert not (root / "b.pth.part").exists()


def test_download_gives_up_after_the_retries(tiny, tmp_path: Path) -> None:
    manifest, _ = tiny
    with pytest.raises(DownloadError, match="giving up after 2 failed attempt"):
        # Port 9 on loopback: nothing listens, so every attempt is refused immediately.
        _download(tmp_path, manifest, "http://127.0.0.1:9", retries=1, timeout=2)


def test_download_fails_fast_when_the_host_does_not_resolve(tiny, tmp_path: Path) -> None:
    """No network: one failed name lookup ends the run at once (no retries), naming the host and the way out."""
    manifest, _ = tiny
    root = tmp_path / "checkpoints"
    started = time.monotonic()
    with pytest.raises(DownloadError) as raised:
        # .invalid never resolves (RFC 2606), with or without a network.
        download_checkpoints(
            root,
            ("256",),
            manifest=manifest,
            mirror="http://sadtalker-checkpoints.invalid",
            progress=False,
            retries=3,
            backoff=10,
        )
    message = str(raised.value)
    assert "cannot resolve sadtalker-checkpoints.invalid" in message
    assert "not attempted" in message and "copy them into" in message
    assert time.monotonic() - started < 10  # a retry would have slept 10 s
    assert list(root.iterdir()) == []  # no .part left behind


def test_cli_download_with_mirror_env(server, synthetic_checkpoints: Path, tmp_path: Path, monkeypatch) -> None:
    """End to end with the real manifest: only the missing mapping file is fetched, from the env mirror."""
    base, state = server
    state.files[MAPPING_CROP] = (synthetic_checkpoints / MAPPING_CROP).read_bytes()
    root = _link_dir(synthetic_checkpoints, tmp_path / "ckpt", skip=(MAPPING_CROP,))
    monkeypatch.setenv(dl.ENV_MIRROR, base)
    assert cli.main(["download", "--dir", str(root), "--size", "256", "--no-progress"]) == 0
    assert state.requests == [(MAPPING_CROP, None)]
    assert verify_checkpoints(root, ("256",)) == []


def test_unreadable_permission_names_the_uid_and_the_chmod_fix(
    synthetic_checkpoints: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Seen when mounting synthetic (mode 0600, root-owned) weights into the image, which runs as uid 1034.
    # Tests run as root in CI, where chmod cannot deny a read, so the read itself is made to fail.
    root = _link_dir(synthetic_checkpoints, tmp_path / "ckpt")
    real_reader = vf.read_safetensors_header

    def reader(path: Path):
        if Path(path).name == ST256:
            raise PermissionError(13, "Permission denied", str(path))
        return real_reader(path)

    monkeypatch.setattr(vf, "read_safetensors_header", reader)
    (problem,) = verify_checkpoints(root, ("256",))
    assert (problem.file, problem.kind) == (ST256, "no_permission")
    assert f"not readable by this process (uid {os.getuid()})" in problem.message
    with pytest.raises(CheckpointError) as info:
        require_checkpoints(root, ("256",))
    message = str(info.value)
    assert f"make the files readable by uid {os.getuid()} (e.g. `chmod a+r {root}/*`)" in message
    assert "download" not in message  # re-downloading would not help
    assert cli.main(["verify", "--dir", str(root), "--size", "256"]) == 1
    assert "FAILED: 1 problem(s). Fix: make the files readable by uid" in capsys.readouterr().err


def test_loaders_get_paths_without_the_download_code() -> None:
    # models.py and the face/enhancer loaders import only the names-and-paths module; the HTTP client, the
    # manifest and verification load on first use (the package's lazy names still work).
    code = (
        "import sys, sadtalker.checkpoints.files\n"
        "heavy = [m for m in ('sadtalker.checkpoints.download', 'sadtalker.checkpoints.verify', "
        "'sadtalker.checkpoints.manifest', 'urllib.request', 'socket') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from sadtalker.checkpoints import require_checkpoints, default_manifest\n"
        "assert 'sadtalker.checkpoints.verify' in sys.modules and len(default_manifest().files) == 8\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_checkpoint_paths_accepts_a_paths_object(tmp_path: Path) -> None:
    paths = checkpoint_paths(tmp_path, 256)
    assert checkpoint_paths(paths) is paths
    assert checkpoint_paths(paths, 512) == checkpoint_paths(tmp_path, 512)
