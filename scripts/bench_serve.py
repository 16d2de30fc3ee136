"""Load test of ``vlattn serve``: N classify requests from C concurrent clients on 127.0.0.1.

Starts ``python -m vlattn serve --port 0`` (or uses ``--url``), sends one warm-up request, then
``--requests`` POST /api/classify requests, each with its own sentence, from ``--clients`` threads.
Every answer must be 200 and carry its own sentence back (nothing lost or mixed up); prints the
latency percentiles, the throughput and how many batches the server ran.

    python scripts/bench_serve.py --requests 200 --clients 8
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit


def start_server() -> tuple[subprocess.Popen[str], str]:
    """A ``vlattn serve`` process on a free port and its base URL (from the line it prints)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "vlattn", "serve", "--port", "0"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stderr is not None
    for line in process.stderr:
        found = re.search(r"http://[^\s/]+", line)
        if found:
            threading.Thread(target=process.stderr.read, daemon=True).start()  # keep the pipe drained
            return process, found.group(0)
    raise SystemExit(f"vlattn serve did not start (exit status {process.wait()})")


def request(base: str, path: str, body: dict[str, object] | None = None) -> tuple[int, dict[str, object], float]:
    """One request on a fresh connection: status, JSON answer, seconds."""
    parts = urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    started = time.perf_counter()
    if body is None:
        connection.request("GET", path)
    else:
        connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    data = json.loads(response.read())
    elapsed = time.perf_counter() - started
    connection.close()
    return response.status, data, elapsed


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--url", default=None, help="a running server (default: start one)")
    args = parser.parse_args()
    process, base = (None, args.url) if args.url else start_server()
    try:
        status, _, warm = request(base, "/api/classify", {"texts": ["warm up the model"]})
        assert status == 200, status
        batches_before = request(base, "/api/health")[1]["batches"]["/api/classify"]  # type: ignore[index]
        texts = [f"review {i}: the food was {'not ' if i % 2 else ''}good" for i in range(args.requests)]

        def one(text: str) -> tuple[int, str, float]:
            code, data, elapsed = request(base, "/api/classify", {"texts": [text]})
            echoed = data["predictions"][0]["text"] if code == 200 else ""  # type: ignore[index]
            return code, echoed, elapsed

        started = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(one, texts))
        wall = time.perf_counter() - started
        batches = request(base, "/api/health")[1]["batches"]["/api/classify"] - batches_before  # type: ignore[index]
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
    answered = sum(code == 200 for code, _, _ in results)
    matched = sum(echoed == text for (_, echoed, _), text in zip(results, texts, strict=True))
    latencies = [elapsed * 1000 for _, _, elapsed in results]
    print(f"server {base}; first request (model load) {warm * 1000:.0f} ms")
    print(f"{args.requests} requests from {args.clients} clients in {wall:.2f} s ({args.requests / wall:.1f} req/s)")
    print(
        f"answered 200: {answered}/{args.requests}; own sentence back: {matched}/{args.requests}; lost: "
        f"{args.requests - answered}"
    )
    print(
        f"latency ms: p50 {percentile(latencies, 0.5):.1f}  p95 {percentile(latencies, 0.95):.1f}  "
        f"max {max(latencies):.1f}  mean {statistics.fmean(latencies):.1f}"
    )
    print(f"server batches: {batches} (mean {args.requests / max(batches, 1):.1f} requests per batch)")
    if answered != args.requests or matched != args.requests:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
