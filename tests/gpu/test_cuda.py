"""The GPU path, on a host with CUDA (`make test-gpu`): fp16 and channels_last chosen at run time,
the same answers as float32 on the CPU, JPEGs decoded in batches with nvJPEG, and `bentoml
serve` serving from the GPU.

Not part of `make test`, which must pass on machines without a GPU; docs/gpu.md records a run."""

import httpx
import pytest
import torch
from support import ServiceProcess, jpeg_of, jpeg_without_quantization_tables, metric, photo

from service.errors import ServiceError
from service.serving.device_decoding import decodable_on_device
from service.serving.model import Classifier
from service.settings import Settings

PHOTOS = ["coffee.png", "chelsea.png", "rocket.jpg", "astronaut.png"]


@pytest.fixture(scope="module", autouse=True)
def cuda():
    if not torch.cuda.is_available():
        pytest.fail("these tests need a CUDA GPU: run them where `nvidia-smi` sees one")


def probabilities(classifier: Classifier) -> torch.Tensor:
    batch = torch.stack([classifier.preprocessor(photo(name))[0] for name in PHOTOS])
    return classifier.infer(batch)


@pytest.fixture(scope="module")
def on_gpu():
    classifier = Classifier(Settings())  # device and dtype left to "auto"
    classifier.warm_up(classifier.sizes_to_warm(32))
    return classifier


def test_auto_picks_cuda_fp16_and_channels_last(on_gpu):
    assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.float16
    convolutions = [p for p in on_gpu.module.parameters() if p.dim() == 4]
    assert convolutions and all(
        p.is_cuda and p.is_contiguous(memory_format=torch.channels_last) for p in convolutions
    )
    card = on_gpu.card()
    assert (card["device"], card["dtype"], card["channels_last"]) == ("cuda", "float16", True)


def test_fp16_on_the_gpu_agrees_with_float32_on_the_cpu(on_gpu):
    gpu = probabilities(on_gpu)
    cpu = probabilities(Classifier(Settings(device="cpu")))
    assert gpu.argmax(dim=1).tolist() == cpu.argmax(dim=1).tolist()
    assert (gpu - cpu).abs().max().item() < 0.02
    assert on_gpu.labels[gpu[0].argmax().item()] == "espresso"


def test_the_folds_in_float16_answer_as_the_model_left_as_it_was(on_gpu):
    # The folds are made in float32 and then cast (serving/folding.py); the model as loaded,
    # cast to float16 on the GPU with its batch norms, is what they must agree with.
    from service.serving.model import build_module

    assert (on_gpu.folded_batch_norms, on_gpu.activations_in_place) == (49, 17)
    assert on_gpu.folded_uneven_paddings == 0  # on the CPU only (folding.py)
    assert on_gpu.fused_convolutions == 0  # oneDNN's: on the CPU only
    as_loaded = build_module(on_gpu.architecture, on_gpu.weights_path, len(on_gpu.labels))
    as_loaded = as_loaded.to("cuda", torch.float16, memory_format=torch.channels_last)
    pixels = torch.stack([on_gpu.preprocessor(photo(name))[0] for name in PHOTOS]).cuda()
    x = on_gpu.preprocessor.normalize(pixels, torch.float16).contiguous(
        memory_format=torch.channels_last
    )
    with torch.inference_mode():
        expected = as_loaded(x).float().softmax(dim=-1)
    folded = probabilities(on_gpu).to("cuda")
    assert folded.argmax(dim=1).tolist() == expected.argmax(dim=1).tolist()
    assert (folded - expected).abs().max().item() < 0.02


def test_bfloat16_is_selectable():
    classifier = Classifier(Settings(dtype="bfloat16"))
    assert classifier.dtype == torch.bfloat16
    assert classifier.labels[probabilities(classifier)[0].argmax().item()] == "espresso"


def test_the_service_serves_from_the_gpu(tmp_path):
    server = ServiceProcess(tmp_path).start()
    try:
        card = httpx.get(server.url + "/model", timeout=10).json()
        assert (card["device"], card["dtype"], card["channels_last"]) == ("cuda", "float16", True)
        answer = httpx.post(
            server.url + "/classify", files={"image": ("coffee.png", photo("coffee.png"))}
        )
        assert answer.status_code == 200 and answer.json()["label"] == "espresso", answer.text
        assert (
            0
            < metric(server, "bento_fleet_gpu_memory_allocated_bytes")
            < metric(server, "bento_fleet_gpu_memory_total_bytes")
        )
    finally:
        server.stop()


def test_batches_run_at_few_warmed_shapes_and_padding_changes_no_row(on_gpu):
    assert on_gpu.sizes_to_warm(32) == (1, 2, 4, 8, 16, 32)
    assert [on_gpu.run_size(n) for n in (1, 3, 5, 17, 32)] == [1, 4, 8, 32, 32]
    tensors = [on_gpu.preprocessor(photo(name))[0] for name in PHOTOS[:3]]
    padded = on_gpu.infer(torch.stack(tensors))  # runs as a batch of 4
    assert padded.shape[0] == 3
    for row, tensor in zip(padded, tensors, strict=True):
        assert (row - on_gpu.infer(tensor[None])[0]).abs().max().item() < 0.01


# Not drafted by Pillow (their shorter side is under twice the resize), so both paths decode in
# full: tests/unit/test_device_decoding.py says why the larger ones differ.
JPEGS = {
    "rocket.jpg": photo("rocket.jpg"),
    "coffee": jpeg_of("coffee.png", quality=95),
    "chelsea": jpeg_of("chelsea.png", quality=95),
}


def test_nvjpeg_decodes_a_batch_with_the_pillow_paths_answers(on_gpu):
    assert on_gpu.jpeg_on_device and on_gpu.card()["jpeg_decode"] == "device"
    cpu = Classifier(Settings(device="cpu"))
    pillow = cpu.run_batch([cpu.preprocessor(data)[0] for data in JPEGS.values()])
    jpegs = [decodable_on_device(on_gpu.preprocessor.open(data), None) for data in JPEGS.values()]
    nvjpeg = on_gpu.run_batch(jpegs)
    for name, on_cpu, on_device in zip(JPEGS, pillow, nvjpeg, strict=True):
        assert on_device.argmax() == on_cpu.argmax(), name
        assert (on_device - on_cpu).abs().max().item() < 0.02, name


def test_a_jpeg_nvjpeg_cannot_decode_fails_alone(on_gpu):
    broken = decodable_on_device(on_gpu.preprocessor.open(jpeg_without_quantization_tables()), 1)
    good = decodable_on_device(on_gpu.preprocessor.open(JPEGS["coffee"]), 0)
    rows = on_gpu.run_batch([good, broken])
    assert on_gpu.labels[rows[0].argmax()] == "espresso"
    assert isinstance(rows[1], ServiceError) and rows[1].code == "not_an_image"


def test_the_service_decodes_jpegs_on_the_gpu(tmp_path):
    server = ServiceProcess(tmp_path, {"BENTO_FLEET_DRIFT__STATISTICS_SHARE": "0.000001"}).start()
    try:
        answer = httpx.post(
            server.url + "/classify", files={"image": ("c.jpg", JPEGS["coffee"])}, timeout=60
        )
        assert answer.status_code == 200 and answer.json()["label"] == "espresso", answer.text
        decoded = 'bento_fleet_device_decoded_images_total{outcome="decoded"}'
        assert metric(server, decoded) == 1
        broken = httpx.post(
            server.url + "/classify",
            files={"image": ("b.jpg", jpeg_without_quantization_tables())},
            timeout=60,
        )
        assert (broken.status_code, broken.json()["error"]["code"]) == (400, "not_an_image")
    finally:
        server.stop()
