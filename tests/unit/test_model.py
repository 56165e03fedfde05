"""The classifier in-process: the embedded default, a torchvision architecture, the model card."""

import time
from pathlib import Path

import pytest
import torch
import torchvision
from support import photo

from service.serving.model import Classifier
from service.settings import Settings


@pytest.fixture(scope="module")
def default_classifier():
    classifier = Classifier(Settings(device="cpu"))
    classifier.warm_up((1,))
    return classifier


def classify(classifier, name):
    tensor, _ = classifier.preprocessor(photo(name))
    return classifier.top_k(classifier.infer(tensor[None])[0], 5)


def test_embedded_default_recognises_real_photos(default_classifier):
    coffee = classify(default_classifier, "coffee.png")
    assert coffee.label == "espresso" and coffee.confidence > 0.8
    assert classify(default_classifier, "rocket.jpg").label in ("missile", "projectile")
    cat = classify(default_classifier, "chelsea.png")
    assert any("cat" in item["label"] for item in cat.top_k[:2])


def test_batch_rows_match_single_image_rows(default_classifier):
    tensors = [default_classifier.preprocessor(photo(n))[0] for n in ("coffee.png", "rocket.jpg")]
    batch = default_classifier.infer(torch.stack(tensors))
    single = default_classifier.infer(tensors[1][None])
    assert torch.allclose(batch[1], single[0], atol=1e-4)
    assert torch.allclose(batch.sum(dim=1), torch.ones(2), atol=1e-4)


def test_on_the_cpu_batches_run_at_their_own_size(default_classifier):
    # Padding to a few shapes is for cuDNN's autotuner (tests/gpu); on the CPU it would cost.
    assert [default_classifier.run_size(n) for n in (1, 5, 17)] == [1, 5, 17]
    assert default_classifier.sizes_to_warm(32) == (1,)


def test_model_card(default_classifier):
    card = default_classifier.card()
    assert card["architecture"] == "efficientnet_lite0"
    assert card["num_classes"] == len(card["classes"]) == 1000
    assert len(card["weights_sha256"]) == 64
    assert (card["device"], card["dtype"]) == ("cpu", "float32")
    # NHWC on the CPU too: oneDNN's convolutions are faster in it (docs/serving.md).
    assert card["channels_last"]
    convolutions = [p for p in default_classifier.module.parameters() if p.dim() == 4]
    assert convolutions and all(
        p.is_contiguous(memory_format=torch.channels_last) for p in convolutions
    )
    assert 4_000_000 < card["parameters"] < 6_000_000  # as trained: before the fold
    assert (card["folded_batch_norms"], card["activations_in_place"]) == (49, 17)  # folding.py
    assert card["folded_uneven_paddings"] == 5  # the stride-2 layers, on the CPU only
    assert card["fused_convolutions"] == 42  # with their ReLU6 or residual add: CPU, eager
    assert card["preprocessing"]["mean"] == [127.0] * 3  # EfficientNet-Lite's own, not ImageNet's
    assert default_classifier.ready


def test_torchvision_architecture_with_local_weights_and_labels(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\n")
    weights = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), weights)
    settings = Settings(
        device="cpu",
        model={"architecture": "resnet18", "weights_path": weights, "labels_path": labels},
    )
    classifier = Classifier(settings)
    tensor, _ = classifier.preprocessor(photo("coffee.png"))
    prediction = classifier.top_k(classifier.infer(tensor[None])[0], 5)
    assert prediction.label in ("cat", "dog", "bird") and len(prediction.top_k) == 3
    assert classifier.card()["preprocessing"]["mean"] == [123.675, 116.28, 103.53]


def test_unknown_architecture_is_refused(tmp_path):
    weights = tmp_path / "w.pt"
    torch.save({}, weights)
    settings = Settings(device="cpu", model={"architecture": "alexnetx", "weights_path": weights})
    with pytest.raises(ValueError, match="alexnetx"):
        Classifier(settings)


def test_weights_for_another_shape_are_refused(tmp_path):
    weights = tmp_path / "w.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), weights)
    settings = Settings(device="cpu", model={"architecture": "resnet18", "weights_path": weights})
    with pytest.raises(RuntimeError, match="size mismatch"):
        Classifier(settings)


def test_cuda_requested_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this host has a GPU: the CPU-only refusal cannot be observed")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        Classifier(Settings(device="cuda"))


def test_cuda_graphs_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this host has a GPU: the CPU-only refusal cannot be observed")
    with pytest.raises(RuntimeError, match="compile=cudagraphs needs a CUDA device"):
        Classifier(Settings(device="cpu", compile="cudagraphs"))


def test_a_compiled_model_answers_as_the_eager_one_and_keeps_its_kernels(tmp_path, monkeypatch):
    from torch._dynamo.utils import counters

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # restored after the test
    weights = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), weights)
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\n")
    model = {
        "architecture": "resnet18",
        "weights_path": weights,
        "labels_path": labels,
        "input_size": 64,
        "resize_size": 72,
    }
    state = tmp_path / "state"
    eager = Classifier(Settings(device="cpu", model=model, state_dir=state))
    compiled = Classifier(Settings(device="cpu", model=model, compile="inductor", state_dir=state))
    # Each shape compiles once, for seconds: batches are padded to a few shapes, warmed at start.
    assert [compiled.run_size(n) for n in (1, 3, 5, 17)] == [1, 4, 8, 32]
    assert compiled.sizes_to_warm(8) == (1, 2, 4, 8)
    assert compiled.card()["compile"] == "inductor" and eager.card()["compile"] == "none"
    # Compiled, inductor fuses the convolutions itself (below), from the model as it was.
    assert (compiled.card()["fused_convolutions"], eager.card()["fused_convolutions"]) == (0, 17)
    pixels = torch.stack([eager.preprocessor(photo(n))[0] for n in ("coffee.png", "rocket.jpg")])
    fused_before = counters["inductor"]["mkldnn_unary_fusion_matcher_count"]
    packed_before = counters["inductor"]["mkldnn_conv_weight_pack_matcher_count"]
    expected, actual = eager.infer(pixels), compiled.infer(pixels)  # runs as a batch of 2
    assert actual.shape == (2, 3)
    assert torch.allclose(actual, expected, atol=1e-4)
    # Frozen on the CPU (model.py): each convolution's weights packed for oneDNN once, and the
    # convolution run with the activation after it as one call.
    assert counters["inductor"]["mkldnn_conv_weight_pack_matcher_count"] > packed_before
    assert counters["inductor"]["mkldnn_unary_fusion_matcher_count"] > fused_before
    # Its kernels are in the state folder, not in /tmp, which a systemd unit with PrivateTmp
    # empties at every start. A frozen graph is lowered again at each start (inductor's graph
    # cache does not take frozen graphs), but the next worker built there loads the compiled
    # kernels instead of building them again: it adds none.
    kernels = state / "compile-cache" / f"torch-{torch.__version__}"

    def built() -> set[Path]:
        return set(kernels.rglob("*.so"))

    cached = built()
    assert cached
    torch._dynamo.reset()  # forget this process's compiled frames, as a new worker has none
    again = Classifier(Settings(device="cpu", model=model, compile="inductor", state_dir=state))
    assert torch.allclose(again.infer(pixels), expected, atol=1e-4)
    assert built() == cached


def test_the_kernel_cache_keeps_this_torchs_kernels_and_drops_other_versions(tmp_path):
    from service.serving.model import kernel_cache

    root = tmp_path / "compile-cache"
    ours = root / f"torch-{torch.__version__}" / "fxgraph" / "entry"
    ours.parent.mkdir(parents=True)
    ours.write_bytes(b"kernel")
    theirs = root / "torch-1.0.0" / "fxgraph" / "entry"  # left by the release before an upgrade
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(b"kernel")
    (root / "stray").write_text("")
    assert kernel_cache(root) == ours.parents[1]
    assert ours.read_bytes() == b"kernel"
    assert sorted(p.name for p in root.iterdir()) == [ours.parents[1].name]
    assert kernel_cache(tmp_path / "new" / "compile-cache").is_dir()  # a first start makes it


def test_a_hosts_workers_spread_over_its_gpus(monkeypatch):
    # The device choice alone (tests/gpu serves on a real one): four GPUs visible.
    from service.serving.model import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    chosen = [resolve_device("cuda", worker) for worker in range(1, 9)]
    assert [device.index for device in chosen] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert resolve_device("auto", 6) == torch.device("cuda", 1)
    assert resolve_device("cuda:3", 6) == torch.device("cuda", 3)  # named: kept
    assert resolve_device("cuda", None) == torch.device("cuda")  # not under bentoml serve
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda", 3) == torch.device("cuda")


def test_batch_profiling_keeps_each_sizes_fastest_round(default_classifier, monkeypatch):
    # A noisy spell over the first three rounds of five: what the size costs is the rest.
    per_image_s = {1: 0.004, 2: 0.003, 4: 0.002, 8: 0.003}
    calls = []

    def infer(batch):
        calls.append(len(batch))
        noisy = len(calls) <= 4 + 3 * 4  # the warm-up passes, then three rounds of 4 sizes
        time.sleep(len(batch) * per_image_s[len(batch)] * (3 if noisy else 1))

    monkeypatch.setattr(default_classifier, "infer", infer)
    profile = default_classifier.profile_batch_sizes([1, 2, 4, 8], rounds=5)
    assert calls[4:8] == [1, 2, 4, 8]  # interleaved: every size once, then again
    for size, cost in per_image_s.items():
        assert cost <= profile[size] < cost * 1.5, (size, profile[size])
