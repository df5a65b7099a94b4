"""Time from POST /generate to its "1" answer (p50/p99), against a running service.

    SADTALKER_ALLOW_CPU=1 SADTALKER_PIPELINE_FACTORY=tests.fakes:create \
        SADTALKER_INPUT_DIRS=/tmp/in SADTALKER_MAX_QUEUE=1000 bentoml serve service:SadTalkerService &
    python bench/service_latency.py --url http://127.0.0.1:3000 --image /tmp/in/face.png --audio /tmp/in/a.wav

Each request carries a fresh request_id, so every one is validated (file checks, image header, audio probe) and
durably queued before "1" comes back; rendering happens afterwards and is not timed.  Prints figures only.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import time

import httpx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--image", required=True)
    parser.add_argument("--audio", required=True)
    parser.add_argument("--option", choices=["full", "crop"], default="crop")
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args(argv)

    timings: list[float] = []
    with httpx.Client(base_url=args.url, timeout=30) as client:
        for _ in range(args.requests):
            body = {
                "source_image": args.image,
                "driven_audio": args.audio,
                "option": args.option,
                "request_id": f"bench-{secrets.token_hex(6)}",
            }
            started = time.perf_counter()
            response = client.post("/generate", json=body)
            timings.append(time.perf_counter() - started)
            if response.status_code != 200 or response.text != "1":
                print(f"unexpected answer {response.status_code}: {response.text}", file=sys.stderr)
                return 1
    ordered = sorted(timings)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    print(
        f"{len(timings)} requests: p50 {statistics.median(timings) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"max {ordered[-1] * 1000:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
