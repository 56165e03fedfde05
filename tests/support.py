"""Helpers shared by the test suites: real photos, free ports, a real `bentoml serve` process,
and a throwaway PostgreSQL cluster."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import httpx
import skimage
from PIL import Image
from sqlalchemy import Engine, create_engine

REPO = Path(__file__).resolve().parent.parent
PHOTOS = Path(skimage.__file__).parent / "data"
# The API key every test service accepts for POST /feedback (auth.api_keys), by this name.
API_KEY_NAME = "tests"
API_KEY = "bfk_tests-only-key-not-a-secret-0123456789abcdefghij"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def photo(name: str) -> bytes:
    return (PHOTOS / name).read_bytes()


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png16(width: int, height: int, color_type: int = 2) -> bytes:
    """A 16-bit PNG (RGB, or gray with color_type 0) of zeros: small on the wire at any size.

    Pillow writes no 16-bit RGB PNG, so the chunks are built here."""
    channels = 3 if color_type == 2 else 1
    row = b"\0" * (1 + width * channels * 2)  # filter byte + the samples
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def jpeg_of(name: str, size: tuple[int, int] | None = None, quality: int = 90) -> bytes:
    image = Image.open(PHOTOS / name).convert("RGB")
    if size:
        image = image.resize(size)
    return encode(image, "JPEG", quality=quality)


def jpeg_without_quantization_tables(name: str = "rocket.jpg") -> bytes:
    """A JPEG whose header reads well (size, mode) but whose pixels cannot be decoded: its
    quantization tables (DQT segments) are left out, and every decoder refuses it."""
    data, kept, at = photo(name), bytearray(photo(name)[:2]), 2
    while data[at + 1] != 0xDA:  # up to the start of the scan, segment by segment
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        if data[at + 1] != 0xDB:
            kept += data[at : at + 2 + length]
        at += 2 + length
    return bytes(kept + data[at:])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def metric(service, name: str) -> float:
    """One sample from the service's /metrics, by its full name with labels; 0 when absent."""
    body = httpx.get(service.url + "/metrics", timeout=10).text
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", body, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def eventually(probe, what: str, timeout_s: float = 30.0, interval_s: float = 0.5):
    """Call `probe` until it returns something truthy, and return that: for what the service
    does in the background (the prediction log flushes, the jobs tick). Fails naming `what`
    and the last value once `timeout_s` has passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s (last: {value!r})"
        time.sleep(interval_s)


def prediction_log(state_dir: Path) -> Engine:
    """The SQLite prediction log a service with this state folder writes (its default)."""
    return create_engine(f"sqlite:///{state_dir}/predictions.db")


def accuracy_of(service, variant, samples, timeout_s=30):
    """The variant's accuracy from /stats once it counts `samples` labels."""

    def counted():
        stats = httpx.get(service.url + "/stats", timeout=30).json()
        found = [
            a for a in stats["accuracy"] if a["variant"] == variant and a["samples"] >= samples
        ]
        return found[0] if found else None

    return eventually(counted, f"accuracy of {variant} over {samples} labels in /stats", timeout_s)


class ServiceProcess:
    """`bentoml serve` from the repository root as a real process on a loopback port."""

    def __init__(
        self,
        state_dir: Path,
        env: dict[str, str] | None = None,
        target: str | None = None,
        cwd: Path = REPO,
    ):
        self.target = [target] if target else []  # a Bento tag; default: bentofile.yaml in cwd
        self.cwd = cwd
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state_dir = state_dir
        self.env = {
            **os.environ,
            "BENTOML_DO_NOT_TRACK": "True",
            "BENTOML_HOME": str(state_dir / "bentoml"),
            "BENTO_FLEET_STATE_DIR": str(state_dir),
            "BENTO_FLEET_AUTH__API_KEYS": json.dumps(
                [{"name": API_KEY_NAME, "sha256": hashlib.sha256(API_KEY.encode()).hexdigest()}]
            ),
            **(env or {}),
        }
        self.log_path = state_dir / "serve.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120, probe: str = "/readyz") -> ServiceProcess:
        """Start it and return once `probe` answers 200 (/livez: the server is up, the model
        may still be loading)."""
        # `python -m bentoml`, not the script beside python: a lent GPU machine has BentoML
        # in a folder on PYTHONPATH (scripts/gpu-run), with no script in python's folder.
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bentoml",
                "serve",
                *self.target,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            cwd=self.cwd,
            env=self.env,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"bentoml serve exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + probe, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(
            f"service not ready in {timeout_s}s:\n{self.log_path.read_text()[-3000:]}"
        )

    def stop(self, timeout_s: float = 30) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        os.killpg(self.process.pid, signal.SIGTERM)  # graceful: BentoML runs shutdown hooks
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text()


def prediction_record(i: int):
    """The i-th of a run of distinct prediction-log records."""
    from service.store import PredictionRecord

    return PredictionRecord(
        request_id=f"req-{i}",
        model_name="m",
        model_version="1",
        class_index=i,
        label=f"class {i}",
        confidence=0.5,
        latency_ms=12.5,
        image_width=320,
        image_height=240,
        image_bytes=1000 + i,
    )


def log_observations(engine, observed, start=None) -> None:
    """Model m version 1's answers with these drift observations, in the prediction log; one
    millisecond apart from `start` when given (else logged now)."""
    from datetime import timedelta

    from service.store.log import PredictionRecord, insert_ignoring_duplicates

    records = [
        PredictionRecord(
            request_id=f"r{i}",
            model_name="m",
            model_version="1",
            class_index=o.class_index,
            label="x",
            confidence=o.confidence,
            latency_ms=10.0,
            image_width=o.width,
            image_height=o.height,
            image_bytes=o.file_size,
            brightness=o.brightness,
            contrast=o.contrast,
            saturation=o.saturation,
            sharpness=o.sharpness,
            **({"created_at": start + timedelta(milliseconds=i)} if start else {}),
        )
        for i, o in enumerate(observed)
    ]
    insert_ignoring_duplicates(engine, records)


class PostgresCluster:
    """A throwaway PostgreSQL server (Debian's packages) on a free loopback port."""

    def __init__(self):
        candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not candidates:
            raise RuntimeError("PostgreSQL is not installed: run scripts/install-test-deps.sh")
        self.bin = Path(candidates[-1]).parent
        self.root = Path(tempfile.mkdtemp(prefix="bento-fleet-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def _run(self, tool: str, *args: str) -> None:
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(
            [*as_postgres, str(self.bin / tool), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=self.root,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-w",
            "-l",
            str(self.root / "log"),
            "start",
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


# -- image sets for drift tests -----------------------------------------------------------------
DRIFT_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
    "immunohistochemistry.png",
)


def photo_crops(count: int, seed: int = 0) -> list[Image.Image]:
    """`count` varied pictures from the sample photos: random crops, scales and mirrors."""
    import random

    rng = random.Random(seed)
    sources = [
        Image.open(PHOTOS / name).convert("RGB")
        for name in DRIFT_PHOTOS
        if (PHOTOS / name).exists()
    ]
    crops = []
    for i in range(count):
        image = sources[i % len(sources)]
        width, height = image.size
        side = rng.uniform(0.55, 0.95)
        w, h = int(width * side), int(height * side * rng.uniform(0.8, 1.2))
        h = min(h, height)
        left, top = rng.randint(0, width - w), rng.randint(0, height - h)
        crop = image.crop((left, top, left + w, top + h))
        scale = rng.uniform(0.6, 1.0)
        crop = crop.resize((max(64, int(w * scale)), max(64, int(h * scale))))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crops.append(crop)
    return crops


def together(functions, timeout_s: float = 60):
    """Run the functions in threads released at the same instant; their results in order.
    A function still running after `timeout_s` fails the test (a hang, such as a deadlock)."""
    start, results = threading.Barrier(len(functions)), [None] * len(functions)

    def run(i):
        start.wait()
        results[i] = functions[i]()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(functions))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [i for i, thread in enumerate(threads) if thread.is_alive()]
    assert not stuck, f"calls {stuck} still running after {timeout_s} s"
    return results


def sqlalchemy_url(libpq_url: str) -> str:
    """A libpq URL (as users and PostgresCluster write it) in the form SQLAlchemy needs: the
    service's own settings do the conversion."""
    from service.settings import DatabaseSettings

    return DatabaseSettings(url=libpq_url).url
