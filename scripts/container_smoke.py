"""Runs the built OCI image with buildah and renders one video through its HTTP API.

    .venv/bin/python scripts/container_smoke.py --image sadtalker:latest --checkpoints DIR \\
        --portrait face.png --audio speech.wav [--option crop] [--landmarks lm68.json]

`buildah run --isolation chroot` is the stand-in for `docker run` where no container engine runs: it uses the
image's environment, user (uid 1034) and working directory, and the host's network, so the server is on
127.0.0.1:PORT.  The image's data directories are bind-mounted from a fresh work directory (inputs read-only,
checkpoints read-only), exactly as the README's `docker run` does.  With SYNTHETIC checkpoints the face detector
is random, so pass the 68 landmarks of the portrait (`--landmarks`, a JSON list of [x, y]) and keep GFPGAN to one
face per frame (set here).  Exits non-zero unless the video lands in the mounted output directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file from the project root
from serving.client import JobFailed, SadTalkerClient, wait_for  # noqa: E402

BENTO_USER = 1034
ENTRYPOINT = "/home/bentoml/bento/env/docker/entrypoint.sh"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] container_smoke: {message}", flush=True)


def wait_ready(base_url: str, server: subprocess.Popen, timeout: float) -> float:
    """Seconds until /readyz answers 200 (BentoML: after the service constructor loaded every model)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if server.poll() is not None:
            raise SystemExit(f"server exited with {server.returncode} before it was ready (see server-N.log)")
        try:
            with urllib.request.urlopen(f"{base_url}/readyz", timeout=5) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(2)
    raise SystemExit(f"server not ready after {timeout:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default="sadtalker:latest", help="OCI image (buildah storage)")
    parser.add_argument("--checkpoints", type=Path, required=True)
    parser.add_argument("--portrait", type=Path, required=True)
    parser.add_argument("--audio", type=Path, required=True)
    parser.add_argument("--option", choices=("crop", "full"), default="crop")
    parser.add_argument("--landmarks", type=Path, help="JSON list of 68 [x, y] points of the portrait")
    parser.add_argument("--port", type=int, default=3300)
    parser.add_argument("--workdir", type=Path, help="default: a new temporary directory (kept, it holds the video)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds for the job to finish")
    parser.add_argument(
        "--restart-after-submit",
        action="store_true",
        help="stop the container while it renders and start a new one on the same volumes: the job must survive",
    )
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sadtalker-smoke-"))
    mounts = {name: workdir / name for name in ("inputs", "output", "state")}
    for name, path in mounts.items():
        path.mkdir(parents=True, exist_ok=True)
        if name != "inputs":
            os.chown(path, BENTO_USER, BENTO_USER)  # the image runs as BentoML's uid 1034, as docker run would
    shutil.copy(args.portrait, mounts["inputs"] / f"portrait{args.portrait.suffix}")
    shutil.copy(args.audio, mounts["inputs"] / f"speech{args.audio.suffix}")
    os.chmod(mounts["inputs"], 0o755)

    base_url = f"http://127.0.0.1:{args.port}"
    volumes = {
        args.checkpoints.resolve(): "/data/checkpoints:ro",
        mounts["inputs"]: "/data/inputs:ro",
        mounts["output"]: "/data/output",
        mounts["state"]: "/data/state",
    }
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", args.port)) == 0:
            raise SystemExit(f"something already listens on {base_url}; stop it or pick another --port")
    server = Server(args.image, volumes, args.port, workdir)
    extra_env = {"SADTALKER_SHUTDOWN_GRACE": "5"} if args.restart_after_submit else {}
    server.start(extra_env)
    try:
        log(f"ready after {server.wait_ready(base_url, timeout=900):.1f} s")
        request = {
            "driven_audio": f"/data/inputs/speech{args.audio.suffix}",
            "source_image": f"/data/inputs/portrait{args.portrait.suffix}",
            "option": args.option,
            "request_id": f"smoke-{args.option}-{int(time.time())}",
        }
        if args.landmarks:
            request["landmarks"] = json.loads(args.landmarks.read_text())
        started = time.monotonic()
        with SadTalkerClient(base_url, timeout=60) as client:
            answer = client.generate(**request)
        log(f"/generate -> {answer!r} in {1000 * (time.monotonic() - started):.0f} ms")
        if str(answer).strip() != "1":
            return 1
        if args.restart_after_submit:
            time.sleep(15)  # let the worker start rendering, then stop the container under it
            with SadTalkerClient(base_url, timeout=60) as client:
                log(f"job before the restart: {client.status(request_id=request['request_id'])}")
            server.stop()
            log("starting a NEW container on the same volumes")
            server.start({})
            log(f"ready after {server.wait_ready(base_url, timeout=900):.1f} s")
        try:
            with SadTalkerClient(base_url, timeout=60) as client:
                job = wait_for(
                    client,
                    request["request_id"],
                    poll_seconds=10,
                    timeout_seconds=args.timeout,
                    on_status=lambda status: log(f"{status['state']} {status['stage']} {status['progress']:.0f} %"),
                )
        except (JobFailed, TimeoutError) as exc:
            log(f"job did not complete: {exc}")
            return 1
        log(f"job completed after {time.monotonic() - started:.0f} s: {json.dumps(job)}")
        video = mounts["output"] / Path(job["output_path"]).name
        if not video.is_file():
            log(f"{video} is missing on the host")
            return 1
        log(f"video on the host: {video} ({video.stat().st_size} bytes)")
        leftovers = [p.name for p in mounts["output"].iterdir() if p != video] + [
            p.name for p in (mounts["state"] / "tmp").iterdir()
        ]
        log(f"other files in output/ and state/tmp/: {leftovers or 'none'}")
        metrics = urllib.request.urlopen(f"{base_url}/metrics", timeout=10).read().decode()
        log("metrics: " + "; ".join(line for line in metrics.splitlines() if line.startswith("sadtalker_jobs_")))
        return 0 if not leftovers else 1
    finally:
        server.stop()


def _is_serve(process: psutil.Process) -> bool:
    """`.../bentoml serve ...` (run directly or as `python .../bentoml serve`)."""
    try:
        words = process.cmdline()
    except psutil.Error:
        return False
    return any(Path(word).name == "bentoml" and words[i + 1 : i + 2] == ["serve"] for i, word in enumerate(words))


class Server:
    """One `buildah run` of the image at a time; each start is a fresh container (as `docker run --rm` would be)."""

    def __init__(self, image: str, volumes: dict[Path, str], port: int, workdir: Path) -> None:
        self.image, self.volumes, self.port, self.workdir = image, volumes, port, workdir
        self.env = dict(os.environ, BUILDAH_ISOLATION="chroot")
        self.container = ""
        self.process: subprocess.Popen | None = None
        self.runs = 0

    def start(self, extra_env: dict[str, str]) -> None:
        self.container = subprocess.run(
            ["buildah", "from", self.image], env=self.env, check=True, capture_output=True, text=True
        ).stdout.strip()
        command = ["buildah", "run", "--isolation", "chroot"]
        settings = {"SADTALKER_ALLOW_CPU": "1", "SADTALKER_ENHANCER_MAX_FACES": "1", **extra_env}
        for key, value in settings.items():
            command += ["--env", f"{key}={value}"]
        for host, target in self.volumes.items():
            command += ["--volume", f"{host}:{target}"]
        command += [self.container, "--", ENTRYPOINT, "serve", "--port", str(self.port)]
        self.runs += 1
        log(f"container {self.container} from {self.image}; work directory {self.workdir}")
        log("$ " + " ".join(command))
        with (self.workdir / f"server-{self.runs}.log").open("w") as sink:
            self.process = subprocess.Popen(command, env=self.env, stdout=sink, stderr=subprocess.STDOUT)

    def wait_ready(self, base_url: str, timeout: float) -> float:
        assert self.process is not None
        return wait_ready(base_url, self.process, timeout)

    def stop(self) -> None:
        """SIGTERM to `bentoml serve` itself, as `docker stop` sends it to the container's PID 1.

        `buildah run` answers SIGTERM by killing its child outright; with chroot isolation the server is an
        ordinary host process, so it is signalled directly and shuts down the way it would under docker.
        """
        if self.process is None:
            return
        if self.process.poll() is not None:  # it already exited (e.g. refused to start): report, don't signal
            server_log = self.workdir / f"server-{self.runs}.log"
            log(f"server had already exited with code {self.process.returncode}; see {server_log}")
            self.process = None
            subprocess.run(["buildah", "rm", self.container], env=self.env, capture_output=True)
            return
        descendants = psutil.Process(self.process.pid).children(recursive=True)
        servers = [child for child in descendants if _is_serve(child)]
        pids = {server.pid for server in servers}
        top = [server for server in servers if server.ppid() not in pids]  # not its own worker processes
        target = top[0] if top else psutil.Process(self.process.pid)
        log(f"SIGTERM to pid {target.pid} (bentoml serve: {bool(top)})")
        target.send_signal(signal.SIGTERM)
        try:
            log(f"server stopped with exit code {self.process.wait(timeout=120)}")
        except subprocess.TimeoutExpired:
            self.process.kill()
            log("server did not stop within 120 s; killed")
        self.process = None
        # No PID namespace under chroot isolation: a worker that outlived its arbiter would keep the port.
        _, alive = psutil.wait_procs(descendants, timeout=10)
        for leftover in alive:
            log(f"killing leftover pid {leftover.pid}")
            leftover.kill()
        subprocess.run(["buildah", "rm", self.container], env=self.env, capture_output=True)


if __name__ == "__main__":
    sys.exit(main())
