"""Scale-out against real `bentoml serve` processes (fake pipeline on CPU, short leases).

* one server, SADTALKER_GPUS=3 worker processes on one SQLite store;
* two servers (own ports, state dirs, BentoML homes) on one PostgreSQL database and one output dir.

Each test starts real servers (tens of seconds on a loaded 2-CPU machine), so they are marked slow.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.test_service_http import (
    Dirs,
    Server,
    body,
    is_descendant,
    launch,
    metric_values,
    pid_alive,
    post,
    server_env,
    wait_ready,
)

LEASE = "2"


def wait_all(server: Server, keys: list[str], states: set[str], timeout: float) -> list[dict]:
    """Status of every request_id once all of them are in ``states``."""
    deadline = time.monotonic() + timeout
    while True:
        found = [post(server, "/status", {"request_id": key}).json() for key in keys]
        if all(job.get("state") in states for job in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def running_job(server: Server, key: str, timeout: float = 30) -> dict:
    return wait_all(server, [key], {"running"}, timeout)[0]


def stop_all(servers: list[Server]) -> None:
    for server in servers:
        if server.process.poll() is None:
            server.stop()


def render_log(dirs: Dirs) -> list[tuple[str, str]]:
    """(pid, output name) of every render started, across all server processes on ``dirs``."""
    log = dirs.root / "renders.log"
    return [tuple(line.split()[:2]) for line in log.read_text().splitlines()] if log.exists() else []  # type: ignore[misc]


def kill_worker_group(worker_pid: int, server: Server) -> None:
    """kill -9 a whole server: its process group and the worker (BentoML gives workers their own group)."""
    os.killpg(server.process.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(worker_pid, signal.SIGKILL)
    server.process.wait(10)


@pytest.mark.slow
def test_three_workers_share_the_queue_and_a_killed_worker_loses_its_job(tmp_path: Path) -> None:
    dirs = Dirs.make(tmp_path)
    env = server_env(
        dirs,
        SADTALKER_GPUS="3",
        SADTALKER_LEASE_SECONDS=LEASE,
        SADTALKER_FAKE_RENDER_SECONDS="3",
        SADTALKER_MAX_QUEUE="32",
    )
    server = launch(dirs, env, "three")
    try:
        wait_ready(server)
        keys = [f"job-{n}" for n in range(12)]
        for key in keys:
            assert post(server, "/generate", body(dirs, request_id=key)).text == "1"
        info = post(server, "/system_info", {}).json()
        assert [worker["device"] for worker in info["workers"]] == ["cpu"] * 3, info["workers"]
        assert info["worker"] in {worker["worker"] for worker in info["workers"]}
        done = wait_all(server, keys, {"completed", "failed"}, timeout=180)
        assert [job["state"] for job in done] == ["completed"] * 12, done
        log = render_log(dirs)
        assert sorted(name for _pid, name in log) == sorted(Path(job["output_path"]).name for job in done)  # once each
        assert len({pid for pid, _name in log}) == 3  # every worker rendered
        completed = {
            name: value for name, value in metric_values(server).items() if name.startswith("sadtalker_jobs_completed")
        }
        assert sum(completed.values()) == 12 and all(f'worker="{n}"' in "".join(completed) for n in range(3)), completed

        # kill -9 of the worker rendering a job: its lease runs out and another worker renders it.
        assert post(server, "/generate", body(dirs, request_id="victim")).text == "1"
        running = running_job(server, "victim")
        victim = int(running["worker"].split(":")[1])
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        finished = wait_all(server, ["victim"], {"completed", "failed"}, timeout=60)[0]
        waited = time.monotonic() - killed_at
        assert finished["state"] == "completed" and finished["attempts"] == 2, finished
        name = Path(finished["output_path"]).name
        assert [pid for pid, rendered in render_log(dirs) if rendered == name][0] == str(victim)
        assert len({pid for pid, rendered in render_log(dirs) if rendered == name}) == 2  # then another worker
        # lease (2 s) + the survivors' queue look (<= lease) + a 3 s render + polling.
        assert waited < 2 + 2 + 3 + 5, waited
    finally:
        stop_all([server])


@pytest.mark.slow
def test_two_servers_on_one_postgres_database(tmp_path: Path, postgres_url: str) -> None:
    shared = Dirs.make(tmp_path / "shared")  # inputs + one output dir every server mounts

    def replica(n: int, **overrides: str) -> Server:
        env = server_env(
            shared,
            SADTALKER_DATABASE_URL=postgres_url,
            SADTALKER_STATE_DIR=str(tmp_path / f"state{n}"),
            BENTOML_HOME=str(tmp_path / f"home{n}"),
            SADTALKER_LEASE_SECONDS=LEASE,
            **({"SADTALKER_FAKE_RENDER_SECONDS": "2", "SADTALKER_MAX_QUEUE": "24"} | overrides),
        )
        return launch(shared, env, f"server{n}")

    servers = [replica(1), replica(2)]
    worker_pids: list[int] = []
    try:
        for server in servers:
            wait_ready(server)
        first, second = servers
        # 20 jobs submitted alternately: each completes exactly once; /status answers the same on both servers.
        keys = [f"alt-{n}" for n in range(20)]
        for n, key in enumerate(keys):
            assert post(servers[n % 2], "/generate", body(shared, request_id=key)).text == "1"
        done = wait_all(first, keys, {"completed", "failed"}, timeout=180)
        assert [job["state"] for job in done] == ["completed"] * 20, done
        on_second = wait_all(second, keys, {"completed"}, timeout=5)
        assert [(j["job_id"], j["output_path"]) for j in on_second] == [(j["job_id"], j["output_path"]) for j in done]
        log = render_log(shared)
        assert sorted(name for _pid, name in log) == sorted(Path(job["output_path"]).name for job in done)
        assert len({pid for pid, _name in log}) == 2  # both servers rendered
        assert len({job["output_path"] for job in done}) == 20  # names allocated on two hosts never collide
        info = post(second, "/system_info", {}).json()
        assert len(info["workers"]) == 2  # both servers' workers, from either server
        worker_pids = [int(worker["worker"].split(":")[1]) for worker in info["workers"]]

        # kill -9 of one server mid-job: the other finishes its job and the queued ones.
        assert post(first, "/generate", body(shared, request_id="k-0")).text == "1"
        victim = int(running_job(first, "k-0")["worker"].split(":")[1])
        owner = next(server for server in servers if is_descendant(victim, server.process.pid))
        survivor = second if owner is first else first
        queued = [f"k-{n}" for n in range(1, 5)]
        for key in queued:
            assert post(owner, "/generate", body(shared, request_id=key)).text == "1"
        kill_worker_group(victim, owner)
        finished = wait_all(survivor, ["k-0", *queued], {"completed", "failed"}, timeout=90)
        assert [job["state"] for job in finished] == ["completed"] * 5, finished
        assert finished[0]["attempts"] == 2

        # A burst of 50 concurrent submissions across two replicas respects the global queue bound.
        assert survivor.stop() == 0, survivor.output()
        burst = [
            replica(3, SADTALKER_FAKE_RENDER_SECONDS="60", SADTALKER_MAX_QUEUE="8"),
            replica(4, SADTALKER_FAKE_RENDER_SECONDS="60", SADTALKER_MAX_QUEUE="8"),
        ]
        servers.extend(burst)
        for server in burst:
            wait_ready(server)

        def submit(n: int) -> int:
            return post(burst[n % 2], "/generate", body(shared, request_id=f"burst-{n}")).status_code

        with ThreadPoolExecutor(max_workers=16) as pool:
            codes = Counter(pool.map(submit, range(50)))
        counts = post(burst[0], "/system_info", {}).json()["jobs_by_state"]
        assert set(codes) == {200, 429}, codes
        # Accepted = queued (never more than the bound) + taken by the two workers meanwhile (at most one each).
        assert counts["queued"] <= 8 and counts["running"] <= 2, counts
        assert counts["queued"] + counts["running"] == codes[200], (counts, codes)
    finally:
        stop_all(servers)
        for pid in worker_pids:
            with contextlib.suppress(ProcessLookupError):
                if pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)
