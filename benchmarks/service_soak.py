"""Soak test of ``moeplan serve``: many concurrent clients against a real server on 127.0.0.1.

50 clients for 60 s mix predictions, architecture summaries, plan submissions and bad bodies
(NaN, infinities, paths as devices, impossible shapes, numbers past a float). It passes when
the server answers no 500 (and drops no connection), accepts no bad body, loses no accepted job
(each one ends ``finished``), and keeps the 99th percentile of ``POST /v1/predict`` under
500 ms. A full queue answers 429, which counts as a correct answer. The host's load average is
printed beside the figures: on a shared machine other tenants' work slows every answer.

    python benchmarks/service_soak.py [--clients 50] [--seconds 60] [--queue-limit 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

MOEPLAN = Path(sys.executable).parent / "moeplan"

GOOD = {
    "predict": ("/v1/predict", {"preset": "phone-moe-a0.3b", "device": "iphone-16-pro", "precision": "int4"}),
    "arch": ("/v1/arch", {"preset": "qwen1.5-moe-a2.7b", "precision": "int4"}),
    "plan": ("/v1/plans", {"device": "galaxy-s25", "memory_gb": 2, "trials": 20, "samples": 20}),
}
BAD = [  # each must be a 422 (or a 404), never a 500
    ("/v1/predict", '{"preset": "phone-moe-a0.3b", "device": "iphone-16-pro", "prompt_tokens": NaN}'),
    ("/v1/predict", '{"preset": "phone-moe-a0.3b", "device": "/etc/passwd.toml"}'),
    (
        "/v1/predict",
        '{"preset": "phone-moe-a0.3b", "device": "iphone-16-pro", "context_tokens": 1, "prompt_tokens": 9}',
    ),
    ("/v1/arch", '{"arch": {"vocab_size": 256, "d_model": 64, "n_layers": 2, "n_heads": 4, "rope_theta": Infinity}}'),
    ("/v1/arch", '{"arch": {"vocab_size": 256, "d_model": 1000000000, "n_layers": 2, "n_heads": 1, "head_dim": 64}}'),
    ("/v1/plans", '{"device": "iphone-16-pro", "memory_gb": Infinity}'),
    ("/v1/plans", '{"device": "iphone-16-pro", "objectives": ["loss", "loss"]}'),
    ("/v1/plans", '{"device": "iphone-16-pro", "seed": -1}'),
    ("/v1/fits", '{"data": [{"N": 1' + "0" * 400 + ', "D": 1, "loss": 1}]}'),
    ("/v1/fits", "{not json"),
]
MIX = [("predict", 0.5), ("arch", 0.15), ("plan", 0.1), ("bad", 0.2), ("jobs", 0.05)]


class Answer:
    """A response: status, body text, JSON."""

    def __init__(self, status_code: int, body: bytes) -> None:
        self.status_code, self.text = status_code, body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.text)


class Connection:
    """One keep-alive HTTP/1.1 connection on asyncio streams.

    The load generator must not be the bottleneck: httpx's async pool costs about 5 ms of CPU per
    request, so 50 of its clients saturate a core of their own before the server does, and the
    latencies measured are the generator's queue. This costs a few tens of microseconds.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> Answer:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(body)}\r\n"
        if body:
            head += "Content-Type: application/json\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        try:
            status_line, *header_lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = dict(line.split(":", 1) for line in header_lines if ":" in line)
            headers = {key.strip().lower(): value.strip() for key, value in headers.items()}
            content = await self.reader.readexactly(int(headers.get("content-length", 0)))
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as error:
            await self.close()
            raise ConnectionError(f"{type(error).__name__}: {error}") from None
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return Answer(int(status_line.split()[1]), content)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def client(connection: Connection, until: float, seed: int, record: dict) -> None:
    rng = random.Random(seed)
    kinds, weights = zip(*MIX, strict=True)
    while time.monotonic() < until:
        kind = rng.choices(kinds, weights)[0]
        start = time.perf_counter()
        try:
            if kind == "jobs":
                response = await asyncio.wait_for(connection.request("GET", "/v1/jobs"), 60)
            elif kind == "bad":
                route, body = rng.choice(BAD)
                response = await asyncio.wait_for(connection.request("POST", route, body.encode()), 60)
            else:
                route, body = GOOD[kind]
                response = await asyncio.wait_for(connection.request("POST", route, json.dumps(body).encode()), 60)
        except (OSError, asyncio.TimeoutError) as error:
            elapsed_ms = (time.perf_counter() - start) * 1e3
            record["transport_errors"].append(f"{kind} after {elapsed_ms:.0f} ms: {type(error).__name__} {error}")
            await connection.close()
            continue
        elapsed_ms = (time.perf_counter() - start) * 1e3
        record["status"][(kind, response.status_code)] += 1
        if kind == "predict" and response.status_code == 200:
            record["predict_ms"].append(elapsed_ms)
        if kind == "plan" and response.status_code == 202:
            record["jobs"].append(response.json()["id"])
        if response.status_code >= 500:
            record["server_errors"].append(f"{kind} {response.status_code}: {response.text[:200]}")
        elif kind == "bad" and response.status_code < 400:
            record["bad_accepted"].append(f"{route} {response.status_code}: {body[:100]}")
    await connection.close()


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def wait_healthy(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.5)
    raise RuntimeError("the server did not start")


def drain(url: str, jobs: list[str], timeout_s: float) -> Counter:
    """Wait for every accepted job to end; count their final statuses (``missing``: lost)."""
    deadline = time.monotonic() + timeout_s
    final: dict[str, str] = {}
    with httpx.Client(base_url=url, timeout=30) as http:
        while time.monotonic() < deadline and len(final) < len(jobs):
            for job in jobs:
                if job in final:
                    continue
                try:
                    response = http.get(f"/v1/plans/{job}")
                except httpx.HTTPError:  # the server is gone or stalled: what is left counts as unfinished
                    continue
                if response.status_code == 404:
                    final[job] = "missing"
                elif response.json()["status"] in ("finished", "failed", "cancelled"):
                    final[job] = response.json()["status"]
            time.sleep(1.0)
    return Counter({**{job: "unfinished" for job in jobs}, **final}.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--queue-limit", type=int, default=8)
    parser.add_argument("--drain-s", type=float, default=900.0, help="how long to wait for accepted jobs to end")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="moeplan-soak-"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(MOEPLAN), "serve", "--port", str(port), "--store", str(folder / "soak.sqlite")]
    server = subprocess.Popen([*command, "--queue-limit", str(args.queue_limit)], stderr=subprocess.DEVNULL)
    try:
        wait_healthy(url)
        load_before = load()
        record = {
            "status": Counter(),
            "predict_ms": [],
            "jobs": [],
            "server_errors": [],
            "transport_errors": [],
            "bad_accepted": [],
        }

        async def run() -> None:
            until = time.monotonic() + args.seconds
            connections = [Connection("127.0.0.1", port) for _ in range(args.clients)]
            await asyncio.gather(*(client(c, until, seed, record) for seed, c in enumerate(connections)))

        started = time.perf_counter()
        asyncio.run(run())
        wall = time.perf_counter() - started
        load_after = load()
        jobs = drain(url, record["jobs"], args.drain_s)
    finally:
        server.kill()
        server.wait()
    latencies = sorted(record["predict_ms"])
    served = sum(record["status"].values())
    summary = {
        "clients": args.clients,
        "seconds": round(wall, 1),
        "requests_served": served,
        "requests_per_s": round(served / wall, 1),
        "answers_500": len(record["server_errors"]),
        "transport_errors": len(record["transport_errors"]),
        "bad_bodies_accepted": len(record["bad_accepted"]),
        "by_kind_and_status": {f"{kind} {code}": n for (kind, code), n in sorted(record["status"].items())},
        "predict_p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "predict_p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))], 1) if latencies else None,
        "jobs_accepted": len(record["jobs"]),
        "jobs_final": dict(jobs),
        "jobs_lost": jobs.get("missing", 0) + jobs.get("failed", 0) + jobs.get("unfinished", 0),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "cpus": os.cpu_count(),
        "server_errors": record["server_errors"][:5],
        "transport_error_samples": record["transport_errors"][:5],
        "bad_accepted": record["bad_accepted"][:5],
    }
    passed = (
        summary["answers_500"] == 0
        and summary["transport_errors"] == 0
        and summary["bad_bodies_accepted"] == 0
        and summary["jobs_lost"] == 0
        and latencies != []
        and summary["predict_p99_ms"] < 500
    )
    summary["passed"] = passed
    print(json.dumps(summary, indent=2))
    return 0 if passed else 1


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
