"""Start-up memory of `bentoml serve` with N render worker processes (SADTALKER_GPUS=N), per process.

Starts the service on CPU, waits for /readyz (models loaded in every worker), then prints the resident (RSS) and
unique (USS: freed if the process died) memory of the BentoML arbiter and of each worker process, and stops it.
Prints figures, asserts nothing.

    python bench/scale_memory.py --fake --workers 1 3        # tests.fakes pipeline: the per-process runtime cost
    python bench/scale_memory.py --checkpoints /work/ckpt --workers 1   # the real models (synthetic weights)
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
BENTOML = Path(sys.executable).with_name("bentoml")
MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def measure(workers: int, fake: bool, checkpoints: Path | None) -> None:
    with tempfile.TemporaryDirectory(prefix="scale-memory-") as tmp:
        root = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SADTALKER_", "PROMETHEUS_"))}
        env |= {
            "BENTOML_HOME": str(root / "home"),
            "BENTOML_DO_NOT_TRACK": "True",
            "SADTALKER_ALLOW_CPU": "1",
            "SADTALKER_GPUS": str(workers),
            "SADTALKER_STATE_DIR": str(root / "state"),
            "SADTALKER_OUTPUT_DIR": str(root / "output"),
            "SADTALKER_INPUT_DIRS": str(root),
        }
        if fake:
            env["SADTALKER_PIPELINE_FACTORY"] = "tests.fakes:create"
        if checkpoints is not None:
            env["SADTALKER_CHECKPOINTS"] = str(checkpoints)
        port = free_port()
        started = time.monotonic()
        process = subprocess.Popen(
            [str(BENTOML), "serve", "service:SadTalkerService", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            while True:
                if process.poll() is not None:
                    raise SystemExit(f"bentoml serve exited with {process.returncode}")
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            # /readyz answers once one worker is ready: wait until every worker announced itself.
            info_url = f"http://127.0.0.1:{port}/system_info"
            while len(httpx.post(info_url, json={}, timeout=30).json()["workers"]) < workers:
                time.sleep(0.5)
            ready = time.monotonic() - started
            time.sleep(2)  # let lazy imports settle
            arbiter = psutil.Process(process.pid)
            rows = []
            for proc in [arbiter, *arbiter.children(recursive=True)]:
                info = proc.memory_full_info()
                kind = "worker" if "_bentoml_impl.worker" in " ".join(proc.cmdline()) else "arbiter/other"
                rows.append((kind, proc.pid, info.rss / MIB, info.uss / MIB))
            label = "fake pipeline" if fake else f"real models ({checkpoints})"
            print(f"\n{workers} worker(s), {label}: ready in {ready:.1f} s")
            for kind, pid, rss, uss in sorted(rows):
                print(f"  {kind:14s} pid {pid:7d}  RSS {rss:7.0f} MiB  USS {uss:7.0f} MiB")
            worker_rss = [rss for kind, _pid, rss, _uss in rows if kind == "worker"]
            worker_uss = [uss for kind, _pid, _rss, uss in rows if kind == "worker"]
            print(
                f"  workers: {len(worker_rss)}, RSS total {sum(worker_rss):.0f} MiB, "
                f"USS total {sum(worker_uss):.0f} MiB, "
                f"USS per worker {sum(worker_uss) / max(1, len(worker_uss)):.0f} MiB"
            )
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--fake", action="store_true", help="the tests' fake pipeline instead of the real models")
    parser.add_argument("--checkpoints", type=Path, default=None)
    args = parser.parse_args()
    for workers in args.workers:
        measure(workers, args.fake, args.checkpoints)


if __name__ == "__main__":
    main()
