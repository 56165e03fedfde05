"""JPEGs decoded with their batch where the model runs (jpeg_decode: device), here on the CPU
(libjpeg-turbo through torchvision; tests/gpu runs the same on nvJPEG): the Pillow path's
answers, EXIF orientations, what is sent there and what is not, and broken files."""

from __future__ import annotations

import asyncio
import collections

import pytest
import torch
from PIL import Image
from support import PHOTOS, encode, jpeg_of, jpeg_without_quantization_tables, photo

from service import metrics
from service.errors import ServiceError
from service.serving import device_decoding
from service.serving.decoding import DecodePool
from service.serving.device_decoding import EncodedJpeg, decodable_on_device, decode_batch
from service.serving.model import Classifier
from service.serving.preprocessing import load_image, open_image
from service.settings import Settings

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def classifier():
    classifier = Classifier(Settings(device="cpu", jpeg_decode="device"))
    classifier.warm_up((1,))
    return classifier


def jpegs() -> dict[str, bytes]:
    return {
        "rocket.jpg": photo("rocket.jpg"),
        "coffee": jpeg_of("coffee.png", quality=95),
        "chelsea": jpeg_of("chelsea.png", quality=95),
        "grey": encode(Image.open(PHOTOS / "chelsea.png").convert("L"), "JPEG", quality=95),
        # Large enough that Pillow decodes them at a reduced scale (its draft mode).
        "astronaut": jpeg_of("astronaut.png", quality=95),
        "astronaut 2048": jpeg_of("astronaut.png", size=(2048, 2048), quality=95),
    }


def pillow_in_full(preprocessor, data: bytes) -> torch.Tensor:
    """The Pillow path's pixels without its draft-mode decode: libjpeg's reduced-scale decode
    is a different downscale (on the astronaut, 0.07 on its top probability), and the device
    decodes in full."""
    return preprocessor.to_tensor(load_image(open_image(data, preprocessor.max_pixels)))


def encoded(classifier: Classifier, data: bytes, position: int | None = None) -> EncodedJpeg:
    jpeg = decodable_on_device(classifier.preprocessor.open(data), position)
    assert jpeg is not None
    return jpeg


def test_auto_decodes_on_the_device_on_cuda_only():
    assert Classifier(Settings(device="cpu")).jpeg_on_device is False
    assert Classifier(Settings(device="cpu", jpeg_decode="device")).jpeg_on_device is True


def test_the_device_path_gives_the_pillow_paths_answers(classifier):
    photos = jpegs()
    pillow = classifier.run_batch(
        [pillow_in_full(classifier.preprocessor, data) for data in photos.values()]
    )
    device = classifier.run_batch([encoded(classifier, data) for data in photos.values()])
    for name, on_cpu, on_device in zip(photos, pillow, device, strict=True):
        assert (on_device - on_cpu).abs().max().item() < 0.02, name
        first, second = on_cpu.topk(2).values
        if first - second > 0.02:  # the astronaut is a near tie (0.136 and 0.134): no top-1
            assert on_device.argmax() == on_cpu.argmax(), name
    assert classifier.card()["jpeg_decode"] == "device"


def test_a_batch_mixes_both_paths_in_input_order(classifier):
    coffee, rocket = photo("coffee.png"), photo("rocket.jpg")
    rows = classifier.run_batch([classifier.preprocessor(coffee)[0], encoded(classifier, rocket)])
    labels = [classifier.labels[row.argmax()] for row in rows]
    assert labels[0] == "espresso" and labels[1] in ("missile", "projectile")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_pillow_applies_it(classifier, orientation):
    picture = Image.open(PHOTOS / "chelsea.png").convert("RGB").crop((0, 0, 420, 300))
    exif = Image.Exif()
    exif[device_decoding.EXIF_ORIENTATION] = orientation
    data = encode(picture, "JPEG", quality=95, exif=exif)
    pillow = classifier.preprocessor(data)[0].float()
    jpeg = encoded(classifier, data)
    assert jpeg.orientation == orientation
    (device,) = decode_batch([jpeg], classifier.preprocessor, CPU)
    assert (device.float() - pillow).abs().mean() < 3  # grey levels of 255
    if orientation != 1:  # the test can fail: unrotated, the picture differs
        (as_stored,) = decode_batch([EncodedJpeg(data, 1, None)], classifier.preprocessor, CPU)
        assert (as_stored.float() - pillow).abs().mean() > 10


@pytest.fixture
def interpolations(monkeypatch) -> list[int]:
    """How many images each interpolation call of the device path is given, in call order."""
    calls: list[int] = []
    real = device_decoding.F.interpolate

    def counted(images, **options):
        calls.append(len(images))
        return real(images, **options)

    monkeypatch.setattr(device_decoding.F, "interpolate", counted)
    return calls


def test_jpegs_of_one_size_are_resampled_together_as_each_alone(classifier, interpolations):
    """On a GPU every operation of every image is a kernel launch paid for on the model thread:
    a batch's photos of one size are interpolated in one call, and to the same pixels."""
    photos = list(jpegs().values())
    batch = [encoded(classifier, data) for data in photos * 3]  # each size three times
    alone = [decode_batch([jpeg], classifier.preprocessor, CPU)[0] for jpeg in batch]
    interpolations.clear()
    together = decode_batch(batch, classifier.preprocessor, CPU)
    sizes = {tuple(image.shape) for image in together}
    assert sizes == {(3, classifier.preprocessor.input_size, classifier.preprocessor.input_size)}
    opened = [classifier.preprocessor.open(data).info for data in photos]
    per_size = collections.Counter((info.width, info.height) for info in opened)
    assert len(per_size) < len(photos)  # two photos share a size: grey and colour chelsea
    assert sorted(interpolations) == sorted(3 * count for count in per_size.values())
    for one, other in zip(alone, together, strict=True):
        assert torch.equal(one, other)


def test_large_images_are_resampled_a_few_at_a_time(classifier, monkeypatch, interpolations):
    """The float copies of a batch of large pictures would not fit a GPU's memory at once."""
    big = encoded(classifier, jpeg_of("astronaut.png", size=(2048, 2048), quality=90))
    monkeypatch.setattr(device_decoding, "RESAMPLE_PIXELS_AT_ONCE", 2 * 2048 * 2048)
    pixels = decode_batch([big] * 5, classifier.preprocessor, CPU)
    assert interpolations == [2, 2, 1]
    assert all(torch.equal(pixels[0], other) for other in pixels[1:])


def test_only_whole_rgb_or_grey_jpegs_go_to_the_device(classifier):
    def opened(data):
        return classifier.preprocessor.open(data)

    rocket = photo("rocket.jpg")
    assert decodable_on_device(opened(rocket), 3) == EncodedJpeg(rocket, 1, 3)
    picture = Image.open(PHOTOS / "chelsea.png").convert("RGB")
    assert decodable_on_device(opened(encode(picture.convert("L"), "JPEG")), None)
    assert decodable_on_device(opened(photo("coffee.png")), None) is None  # a PNG
    assert decodable_on_device(opened(encode(picture.convert("CMYK"), "JPEG")), None) is None
    cut = rocket[: len(rocket) * 2 // 3]  # its header whole, its scan cut: no EOI marker
    assert decodable_on_device(opened(cut), None) is None


def test_a_jpeg_the_device_refuses_is_decoded_by_pillow(classifier, monkeypatch):
    refused = photo("rocket.jpg")
    real = device_decoding.decode_jpeg

    def refuses_one(data, **options):  # what nvJPEG does with a JPEG it does not support
        items = data if isinstance(data, list) else [data]
        if any(bytes(item.numpy()) == refused for item in items):
            raise RuntimeError("nvjpegDecode failed: JPEG stream not supported")
        return real(data, **options)

    monkeypatch.setattr(device_decoding, "decode_jpeg", refuses_one)
    fallbacks = metrics.DEVICE_DECODED_IMAGES.labels("fallback")._value.get()
    rows = classifier.run_batch([encoded(classifier, refused), encoded(classifier, photo_jpeg())])
    assert classifier.labels[rows[0].argmax()] in ("missile", "projectile")
    assert classifier.labels[rows[1].argmax()] == "espresso"
    assert metrics.DEVICE_DECODED_IMAGES.labels("fallback")._value.get() == fallbacks + 1


def photo_jpeg() -> bytes:
    return jpeg_of("coffee.png", quality=95)


def test_a_broken_jpeg_fails_alone_with_the_pillow_paths_error(classifier):
    broken = jpeg_without_quantization_tables()
    with pytest.raises(ServiceError) as on_cpu:
        classifier.preprocessor(broken)
    rows = classifier.run_batch(
        [encoded(classifier, photo_jpeg(), 0), encoded(classifier, broken, 1)]
    )
    assert classifier.labels[rows[0].argmax()] == "espresso"
    assert isinstance(rows[1], ServiceError)
    assert rows[1].code == on_cpu.value.code == "not_an_image"
    assert rows[1].message == f"images[1]: {on_cpu.value.message}"


def test_the_decode_pool_passes_light_jpegs_on_and_keeps_the_rest():
    pool = DecodePool(statistics_share=1e-12)
    preprocessor = Classifier(Settings(device="cpu")).preprocessor
    images = [
        photo("rocket.jpg"),
        photo("coffee.png"),
        # 36 MP: light for Pillow, which decodes it at 1/8 scale; the device would in full.
        jpeg_of("astronaut.png", size=(6000, 6000)),
    ]
    admitted = pool.admit(pool.open(images, preprocessor), 2.0, jpegs_on_device=True)
    assert [held.on_device is not None for held in admitted] == [True, False, False]
    assert [held.lane for held in admitted] == [None, pool.light, pool.light]
    assert pool.light.backlog_s == pytest.approx(admitted[1].estimate_s + admitted[2].estimate_s)

    decoded = asyncio.run(pool.decode(admitted, [preprocessor, preprocessor]))
    (info, inputs), (_, pixels), _ = decoded
    assert inputs == [admitted[0].on_device] * 2 and info.format == "JPEG"
    assert all(isinstance(tensor, torch.Tensor) for tensor in pixels)
    assert pool.light.backlog_s == pool.heavy.backlog_s == 0
    pool.close()


def test_images_drawn_for_statistics_take_the_pillow_path():
    pool = DecodePool(statistics_share=1.0)
    preprocessor = Classifier(Settings(device="cpu")).preprocessor
    (held,) = pool.admit(pool.open([photo("rocket.jpg")], preprocessor), 2.0, True)
    assert held.on_device is None and held.statistics
    ((info, _),) = asyncio.run(pool.decode([held], [preprocessor]))
    assert info.stats is not None
    pool.close()
