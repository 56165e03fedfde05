"""What a `bentoml.depends` hop costs: the measurement behind issue 14's item 2.

    .venv/bin/python bench/hop.py            # about six minutes; bench/results/hop.json

Item 2 chooses between two ways to spread a GPU host's HTTP parsing and decoding over its
cores: BentoML worker processes, each with its own model copy and batcher (what the service
does), or front processes that send each request's images to one model process through
`bentoml.depends`. The split costs every request a hop that workers do not pay: the front
pickles the images and posts them over a Unix socket, and the model process parses that
request and answers it, on one event loop shared with the batcher, the model thread's Python
side and, with nvJPEG, the decode calls. This measures the hop alone, on bench/hop_services.py:
the same front answering in itself (/direct), or through a model service that does no work,
sent either JPEG bytes (/jpeg: nvJPEG in the model process) or decoded 3x224x224 uint8 pixels
(/pixels: decoding in the front).

For each route, images per request (1 and 32) and concurrency, interleaved over `--rounds`:
the CPU milliseconds per image sent of the model process and of the front processes, the load
generator's cores, and the share of requests that failed. The hop's cost is a route's front +
model CPU per image less /direct's front CPU in the same round. The model process's CPU per
image bounds what one such process can take: 1000 / that many images a second for each core its
event loop can use (one), before it runs a single forward pass.

Per image sent, not answered: BentoML 1.4.39's dependency client replaces its connection pool
every 100 requests and closes the old one under the requests still in flight on it
(`SessionManager.get_session`, _bentoml_impl/client/proxy2.py), so some hops fail at any
concurrency above one (the front answers them 500); they cost nearly what an answered one does.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil
from benchmark import REPO, RESULTS, commit_of, cpu_seconds, percentile, spread
from support import ServiceProcess  # on the path benchmark.py sets: the repository's tests/

ROUTES = ("direct", "jpeg", "pixels")
TARGETS = {1: 2500, 32: 6000}  # issue 14's GPU bars, images a second: /classify, /classify_batch


async def closed_loop(url: str, route: str, images: int, concurrency: int, seconds: float) -> dict:
    latencies: list[float] = []
    failed = 0
    stop_at = time.perf_counter() + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal failed
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            async with session.post(f"{url}/{route}", json={"images": images}) as response:
                body = await response.json()
            if response.status == 200 and len(body["top_k"]) == images:
                latencies.append(time.perf_counter() - t0)
            else:
                failed += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "seconds": elapsed,
        "requests": len(latencies),
        "failed": failed,
        "img_per_s": len(latencies) * images / elapsed,
        "failed_share": failed / (failed + len(latencies)),
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": max(latencies) * 1000,
    }


class HopServer:
    """`bentoml serve bench.hop_services:Front`: the front's workers and the model process."""

    def __init__(self, front_workers: int):
        state = Path(tempfile.mkdtemp(prefix="bento-fleet-hop-"))
        env = {"PYTHONPATH": f"{REPO}:{REPO / 'tests'}", "HOP_FRONT_WORKERS": str(front_workers)}
        self.process = ServiceProcess(state, env, target="bench.hop_services:Front")

    def roles(self) -> dict[str, list[psutil.Process]]:
        """Its processes by the service they run (BentoML's worker command line names it)."""
        root = psutil.Process(self.process.process.pid)
        found: dict[str, list[psutil.Process]] = {"model": [], "front": [], "arbiter": [root]}
        roles = {"Model": "model", "Front": "front"}
        for child in root.children(recursive=True):
            command = child.cmdline()
            service = (
                command[command.index("--service-name") + 1]
                if "--service-name" in command
                else None
            )
            found[roles.get(service, "arbiter")].append(child)
        return found

    def cpu(self) -> dict[str, float]:
        totals = {}
        for role, processes in self.roles().items():
            totals[role] = sum(sum(p.cpu_times()[:2]) for p in processes)
        return totals


def measure(server: HopServer, route: str, images: int, concurrency: int, seconds: float) -> dict:
    before, own_before = server.cpu(), cpu_seconds()
    result = asyncio.run(closed_loop(server.process.url, route, images, concurrency, seconds))
    after, own = server.cpu(), cpu_seconds() - own_before
    sent = (result["requests"] + result["failed"]) * images
    result.update(
        route=route,
        images_per_request=images,
        concurrency=concurrency,
        **{
            f"{role}_cpu_ms_per_image": (after[role] - before[role]) * 1000 / sent
            for role in ("model", "front", "arbiter")
        },
        load_generator_cores=own / result["seconds"],
    )
    return result


def summarise(runs: list[dict]) -> list[dict]:
    """Medians per (images, concurrency, route), and the hop's cost against /direct's front
    CPU in each round."""
    groups = collections.defaultdict(list)
    for run in runs:
        groups[(run["images_per_request"], run["concurrency"], run["route"])].append(run)
    rows = []
    for (images, concurrency, route), group in sorted(groups.items()):
        direct = {r["round"]: r for r in groups[(images, concurrency, "direct")]}
        hop = [
            r["front_cpu_ms_per_image"]
            + r["model_cpu_ms_per_image"]
            - direct[r["round"]]["front_cpu_ms_per_image"]
            for r in group
        ]
        model_ms = spread([r["model_cpu_ms_per_image"] for r in group])
        rows.append(
            {
                "images_per_request": images,
                "concurrency": concurrency,
                "route": route,
                "img_per_s": spread([r["img_per_s"] for r in group]),
                "p50_ms": spread([r["p50_ms"] for r in group]),
                "p99_ms": spread([r["p99_ms"] for r in group]),
                "max_ms": max(r["max_ms"] for r in group),
                "failed_share": spread([r["failed_share"] for r in group]),
                "front_cpu_ms_per_image": spread([r["front_cpu_ms_per_image"] for r in group]),
                "model_cpu_ms_per_image": model_ms,
                "hop_cpu_ms_per_image": spread(hop) if route != "direct" else None,
                "model_process_img_per_s_per_core": (
                    1000 / model_ms["median"] if route != "direct" else None
                ),
                "load_generator_cores": spread([r["load_generator_cores"] for r in group]),
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    def cell(value: dict | None, digits: int = 2) -> str:
        if value is None:
            return "-"
        return f"{value['median']:.{digits}f} ({value['min']:.{digits}f}-{value['max']:.{digits}f})"

    lines = [
        "| images/request | clients | route | img/s | p50 ms | slowest ms | failed % "
        "| front CPU ms/img | model process CPU ms/img | hop CPU ms/img "
        "| one model process, img/s a core | load generator cores |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        cap = row["model_process_img_per_s_per_core"]
        lines.append(
            f"| {row['images_per_request']} | {row['concurrency']} | {row['route']} "
            f"| {cell(row['img_per_s'], 0)} | {cell(row['p50_ms'], 1)} | {row['max_ms']:.0f} "
            f"| {row['failed_share']['median'] * 100:.1f} "
            f"| {cell(row['front_cpu_ms_per_image'])} | {cell(row['model_cpu_ms_per_image'])} "
            f"| {cell(row['hop_cpu_ms_per_image'])} | {'-' if cap is None else f'{cap:.0f}'} "
            f"| {cell(row['load_generator_cores'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    # A time limit's SIGTERM (scripts/gpu-run's) ends the run through its `finally`, which stops
    # the servers: killed outright, the bench would leave their workers loading the next run.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per run")
    parser.add_argument("--front-workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--images-per-request", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--output", default=str(RESULTS / "hop.json"))
    args = parser.parse_args()

    server = HopServer(args.front_workers)
    runs = []
    try:
        server.process.start(probe="/readyz")
        for route in ROUTES:  # warm every route's connections and code
            asyncio.run(closed_loop(server.process.url, route, 1, 4, 2))
        for round_number in range(1, args.rounds + 1):
            for images in args.images_per_request:
                for concurrency in args.concurrency:
                    for route in ROUTES:
                        run = measure(server, route, images, concurrency, args.duration)
                        run["round"] = round_number
                        runs.append(run)
                        print(
                            f"round {round_number} {images}/request {concurrency} clients "
                            f"{route}: {run['img_per_s']:.0f} img/s, model "
                            f"{run['model_cpu_ms_per_image']:.3f} front "
                            f"{run['front_cpu_ms_per_image']:.3f} ms/img, "
                            f"{run['failed']} failed",
                            flush=True,
                        )
    finally:
        server.process.stop()
    rows = summarise(runs)
    report = {
        "commit": commit_of(REPO),
        "machine": {"cpus": psutil.cpu_count(), "python": platform.python_version()},
        "front_workers": args.front_workers,
        "rounds": args.rounds,
        "seconds_per_run": args.duration,
        "targets_img_per_s": TARGETS,
        "summary": rows,
        "runs": runs,
    }
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(table(rows))
    cores = statistics.median(run["load_generator_cores"] for run in runs)
    print(f"median load generator cores: {cores:.2f}")


if __name__ == "__main__":
    main()
