"""The Python packages a lent GPU machine lacks, as wheels for its Python, to carry there.

    .venv/bin/python scripts/gpu_kit.py        # -> var/gpu-kit/*.whl, about 52 MiB

The GPU machines this project is lent (docs/gpu.md) reach no package index. Their Python (3.12)
holds PyTorch, torchvision, NumPy, SciPy, Pillow, Matplotlib and scikit-image (the test photos),
not BentoML or the rest of what the service, `tests/gpu`, the bench and gpu-check.yml need. That
rest is the closure of requirements.txt and of TOOLS below, at the versions this venv pins, less
what the machine provides and what is too large to carry (LEFT_OUT). This downloads each of
them, without its dependencies (the closure lists them already), as a binary wheel for that
Python on x86-64 Linux, through this machine's pip configuration. scripts/gpu-run installs them
there.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
KIT = REPO / "var" / "gpu-kit"
# What the bench, tests/gpu and playbooks/gpu-check.yml need beside the service's own
# requirements: ansible-core alone for the playbook, which uses ansible.builtin only (the
# ansible bundle's collections are some 50 MiB of the 64 a run carries).
TOOLS = ("aiohttp", "httpx", "psutil", "pytest", "ansible-core")
# On the GPU machine already, in builds matched to its CUDA: carried, they would replace them.
PROVIDED = {"torch", "torchvision", "triton", "numpy", "scipy", "pillow", "matplotlib"}
# Too large to carry: OpenCV's wheel alone is 61 MiB of the 64. Without it the service resamples
# with Pillow (service/serving/preprocessing.py), the same pixels within 1 of 255, slower on the
# CPU; JPEGs decoded on the GPU (jpeg_decode: device) are resampled there either way.
LEFT_OUT = {"opencv-python-headless"}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def provided(name: str) -> bool:
    return name in PROVIDED or name in LEFT_OUT or name.startswith("nvidia-")


def closure(roots: list[Requirement]) -> dict[str, str]:
    """Every distribution `roots` need, transitively, as installed here: name -> version."""
    found: dict[str, str] = {}
    pending = [(root, set(root.extras)) for root in roots]
    while pending:
        requirement, extras = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in found or provided(name):
            continue
        distribution = metadata.distribution(requirement.name)
        found[name] = distribution.version
        for line in distribution.requires or []:
            needed = Requirement(line)
            wanted = extras or {""}
            if needed.marker and not any(needed.marker.evaluate({"extra": e}) for e in wanted):
                continue
            pending.append((needed, set(needed.extras)))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python")
    parser.add_argument("--output", type=Path, default=KIT)
    args = parser.parse_args()
    lines = (REPO / "requirements.txt").read_text().splitlines()
    roots = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    roots += [Requirement(name) for name in TOOLS]
    pins = [f"{name}=={version}" for name, version in sorted(closure(roots).items())]
    shutil.rmtree(args.output, ignore_errors=True)  # one version of each, or none installs
    args.output.mkdir(parents=True)
    platforms = [option for platform in PLATFORMS for option in ("--platform", platform)]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            args.python_version,
            *platforms,
            "--dest",
            str(args.output),
            *pins,
        ],
        check=True,
    )
    wheels = sorted(args.output.glob("*.whl"))
    size = sum(wheel.stat().st_size for wheel in wheels)
    print(f"{len(wheels)} wheels for {len(pins)} pins, {size / 2**20:.0f} MiB in {args.output}")


if __name__ == "__main__":
    main()
