"""serving.client rides through a draining or restarting server (what clients see is measured in the README)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from bentoml.exceptions import BentoMLException

from serving.client import JobFailed, retry_unavailable, wait_for


class FlakyClient:
    """Answers /status like a server that is shut down and restarted while the job waits."""

    def __init__(self, outages: list[BaseException], final: dict[str, Any]) -> None:
        self.outages = list(outages)
        self.final = final
        self.calls = 0

    def status(self, *, request_id: str) -> dict[str, Any]:
        self.calls += 1
        if self.outages:
            raise self.outages.pop(0)
        return self.final | {"request_id": request_id}


def unavailable(code: int) -> BentoMLException:
    exc = BentoMLException("unavailable")
    exc.error_code = code  # type: ignore[assignment]
    return exc


def test_wait_for_retries_through_a_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("time.sleep", lambda _seconds: None)
    outages: list[BaseException] = [httpx.ReadTimeout("drain"), httpx.ConnectError("refused"), unavailable(503)]
    client = FlakyClient(outages, {"state": "completed", "output_path": "/out/v.mp4"})
    status = wait_for(client, "r1", poll_seconds=0, timeout_seconds=60)  # type: ignore[arg-type]
    assert status["output_path"] == "/out/v.mp4" and client.calls == 4


def test_client_errors_and_failed_jobs_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("time.sleep", lambda _seconds: None)
    client = FlakyClient([unavailable(404)], {"state": "completed"})
    with pytest.raises(BentoMLException):
        wait_for(client, "r1", poll_seconds=0, timeout_seconds=60)  # type: ignore[arg-type]
    assert client.calls == 1
    with pytest.raises(JobFailed):
        wait_for(FlakyClient([], {"state": "failed", "error": "x"}), "r", timeout_seconds=60)  # type: ignore[arg-type]


def test_retry_gives_up_at_the_deadline() -> None:
    calls: list[float] = []

    def down() -> None:
        calls.append(1)
        raise httpx.ConnectError("refused")

    with pytest.raises(httpx.ConnectError):
        retry_unavailable(down, deadline=0.0, sleep=lambda _s: None)
    assert len(calls) == 1
