"""Benchmark: the served API against the model alone, on this machine, in one run.

    make bench            # or: .venv/bin/python bench/benchmark.py --duration 10

1. The ceiling: the model in-process with the same preprocessing (JPEG bytes -> tensor ->
   forward pass), at batch sizes 1..32; its best throughput and its single-image latency.
2. The service under `bentoml serve` on loopback, closed-loop clients uploading real 320x240
   JPEGs at each concurrency, with adaptive batching on and then off. Clients honour
   Retry-After on 503 (capped at 1 s), as a well-behaved client would.

Prints a table and writes JSON (bench/results/benchmark.json). Speed is reported as ratios
measured in this one run, since these machines are shared and absolute numbers drift.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from support import ServiceProcess, jpeg_of  # noqa: E402

PHOTOS = ["coffee.png", "chelsea.png", "rocket.jpg", "astronaut.png", "camera.png"]
CONCURRENCY = [1, 4, 16, 32, 64]


def uploads() -> list[bytes]:
    return [jpeg_of(name, (320, 240), quality=90) for name in PHOTOS]


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


# -- 1. the model alone -----------------------------------------------------------------
def measure_ceiling(images: list[bytes], seconds: float) -> dict:
    import torch

    from service.serving.model import Classifier
    from service.settings import Settings

    classifier = Classifier(Settings())
    classifier.warm_up(classifier.sizes_to_warm(32))

    def run(batch_size: int) -> tuple[float, list[float]]:
        done, latencies, started = 0, [], time.perf_counter()
        while time.perf_counter() - started < seconds:
            t0 = time.perf_counter()
            batch = [images[(done + i) % len(images)] for i in range(batch_size)]
            tensors = torch.stack([classifier.preprocessor(data)[0] for data in batch])
            probabilities = classifier.infer(tensors)
            for row in probabilities:
                classifier.top_k(row, 5)
            latencies.append(time.perf_counter() - t0)
            done += batch_size
        return done / (time.perf_counter() - started), latencies

    by_batch = {}
    for batch_size in (1, 4, 8, 16, 32):
        throughput, latencies = run(batch_size)
        by_batch[batch_size] = {
            "img_per_s": throughput,
            "p50_batch_ms": statistics.median(latencies) * 1000,
        }
        print(f"  in-process batch {batch_size:>2}: {throughput:6.2f} img/s", file=sys.stderr)
    best = max(by_batch, key=lambda b: by_batch[b]["img_per_s"])
    return {
        "by_batch_size": by_batch,
        "best_batch_size": best,
        "ceiling_img_per_s": by_batch[best]["img_per_s"],
        "single_image_p50_ms": by_batch[1]["p50_batch_ms"],
        "device": str(classifier.device),
        "torch_threads": torch.get_num_threads(),
    }


# -- 2. the service ---------------------------------------------------------------------
async def closed_loop(url: str, images: list[bytes], concurrency: int, seconds: float) -> dict:
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    timeouts = 0
    retry_after_missing = 0
    stop_at = time.perf_counter() + seconds
    timeout = aiohttp.ClientTimeout(total=30)

    async def client(index: int, session: aiohttp.ClientSession) -> None:
        nonlocal timeouts, retry_after_missing
        sent = index
        while time.perf_counter() < stop_at:
            form = aiohttp.FormData()
            form.add_field("image", images[sent % len(images)], filename="p.jpg")
            sent += concurrency
            t0 = time.perf_counter()
            try:
                async with session.post(url + "/classify", data=form) as response:
                    await response.read()
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
            except TimeoutError:
                timeouts += 1
                continue
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            if status == 200:
                latencies.append(time.perf_counter() - t0)
            elif status == 503:
                if retry_after is None:
                    retry_after_missing += 1
                await asyncio.sleep(min(1.0, float(retry_after or 1)))

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(i, session) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    ok = statuses.get("200", 0)
    return {
        "concurrency": concurrency,
        "seconds": elapsed,
        "requests": sum(statuses.values()),
        "ok": ok,
        "req_per_s": ok / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p95_ms": percentile(latencies, 95) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "statuses": statuses,
        "timeouts": timeouts,
        "503_without_retry_after": retry_after_missing,
    }


def batch_metrics(url: str) -> tuple[float, float]:
    import httpx

    body = httpx.get(url + "/metrics", timeout=10).text

    def value(name: str) -> float:
        match = re.search(rf"^{name} ([0-9.e+]+)$", body, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    return value("bento_fleet_batch_size_sum"), value("bento_fleet_batch_size_count")


def measure_service(images, batching: bool, seconds: float, levels: list[int]) -> list[dict]:
    env = {"BENTO_FLEET_BATCHING__ENABLED": "true" if batching else "false"}
    server = ServiceProcess(Path(tempfile.mkdtemp(prefix="bento-fleet-bench-")), env).start()
    results = []
    try:
        asyncio.run(closed_loop(server.url, images, 4, 3))  # warm the HTTP path
        for concurrency in levels:
            sum_before, count_before = batch_metrics(server.url)
            result = asyncio.run(closed_loop(server.url, images, concurrency, seconds))
            sum_after, count_after = batch_metrics(server.url)
            batches = count_after - count_before
            result["mean_batch_size"] = (sum_after - sum_before) / batches if batches else 0
            result["batching"] = batching
            results.append(result)
            print(
                f"  served, batching {'on ' if batching else 'off'} c={concurrency:>2}: "
                f"{result['req_per_s']:6.2f} req/s p50 {result['p50_ms']:6.0f} ms "
                f"batch {result['mean_batch_size']:5.2f} {result['statuses']}",
                flush=True,
            )
    finally:
        server.stop()
    return results


def table(ceiling: dict, served: list[dict]) -> str:
    lines = [
        "| batching | clients | req/s | vs. ceiling | p50 ms | p95 ms | p99 ms "
        "| mean batch | responses | timeouts |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in served:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))
        lines.append(
            f"| {'on' if r['batching'] else 'off'} | {r['concurrency']} | {r['req_per_s']:.2f} "
            f"| {r['req_per_s'] / ceiling['ceiling_img_per_s']:.0%} | {r['p50_ms']:.0f} "
            f"| {r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['mean_batch_size']:.2f} "
            f"| {statuses} | {r['timeouts']} |"
        )
    return "\n".join(lines)


def verdicts(ceiling: dict, served: list[dict]) -> dict:
    on = {r["concurrency"]: r for r in served if r["batching"]}
    result = {}
    if 32 in on:
        c32 = on[32]
        fives = sum(v for k, v in c32["statuses"].items() if k.startswith("5"))
        ratio = c32["req_per_s"] / ceiling["ceiling_img_per_s"]
        result["c32_throughput_vs_ceiling"] = round(ratio, 3)
        result["c32_target_met"] = ratio >= 0.85 and fives == 0 and c32["timeouts"] == 0
    if 1 in on:
        budget = 1.25 * ceiling["single_image_p50_ms"] + 10
        result["c1_p50_ms"] = round(on[1]["p50_ms"], 1)
        result["c1_p50_budget_ms"] = round(budget, 1)
        result["c1_target_met"] = on[1]["p50_ms"] <= budget
    if 64 in on:
        c64 = on[64]
        other_errors = {k: v for k, v in c64["statuses"].items() if k not in ("200", "503")}
        result["c64_target_met"] = (
            c64["timeouts"] == 0 and not other_errors and c64["503_without_retry_after"] == 0
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=15, help="seconds per level")
    parser.add_argument("--levels", default=",".join(map(str, CONCURRENCY)))
    parser.add_argument("--ceiling-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", default=str(REPO / "bench/results/benchmark.json"))
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    images = uploads()

    if args.ceiling_only:
        print(json.dumps(measure_ceiling(images, seconds=args.duration)))
        return
    print("ceiling: the model alone, in-process, same preprocessing", flush=True)
    # In a process of its own: torch's thread pool left in this one would slow the clients.
    ceiling_run = subprocess.run(
        [sys.executable, __file__, "--ceiling-only", "--duration", str(min(args.duration, 8))],
        check=True,
        capture_output=True,
        text=True,
    )
    print(ceiling_run.stderr, end="", flush=True)
    ceiling = json.loads(ceiling_run.stdout.strip().splitlines()[-1])
    print("served: bentoml serve on loopback, closed-loop clients", flush=True)
    served = measure_service(images, True, args.duration, levels)
    served += measure_service(images, False, args.duration, levels)

    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "duration_per_level_s": args.duration,
        "upload": "320x240 JPEG, quality 90",
        "ceiling": ceiling,
        "served": served,
        "targets": verdicts(ceiling, served),
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    print()
    print(
        f"ceiling (model alone, batch {ceiling['best_batch_size']}): "
        f"{ceiling['ceiling_img_per_s']:.2f} img/s; single image p50 "
        f"{ceiling['single_image_p50_ms']:.1f} ms on {ceiling['device']}"
    )
    print(table(ceiling, served))
    print()
    print("targets:", json.dumps(report["targets"]))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
