"""/stats numbers and the input statistics drift detection is built on."""

import itertools

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
from support import PHOTOS, photo_crops

from service.serving.live_stats import LiveStats
from service.serving.preprocessing import hsv_saturation, image_statistics


def test_live_stats_percentiles_errors_and_batches():
    live = LiveStats()
    for latency in range(1, 101):
        live.request("main", 1, float(latency))
    live.error("not_an_image")
    live.batch(4)
    live.batch(2)
    snap = live.snapshot()
    assert snap["requests"] == 100 and snap["errors_by_code"] == {"not_an_image": 1}
    assert 49 <= snap["latency_ms"]["p50"] <= 51 and 98 <= snap["latency_ms"]["p99"] <= 100
    assert snap["batch_sizes"]["mean"] == 3.0


def test_statistics_follow_brightness_saturation_and_blur():
    image = Image.open(PHOTOS / "coffee.png").convert("RGB")
    base = image_statistics(image)
    darker = image_statistics(ImageEnhance.Brightness(image).enhance(0.5))
    grey = image_statistics(image.convert("L").convert("RGB"))
    blurred = image_statistics(image.filter(ImageFilter.GaussianBlur(3)))
    assert darker.brightness < base.brightness * 0.6
    assert grey.saturation < 0.01 < base.saturation
    assert blurred.sharpness < base.sharpness * 0.5
    assert abs(blurred.brightness - base.brightness) < 0.01
    assert image_statistics(Image.new("RGB", (1, 1))).sharpness == 0.0


def test_saturation_is_pillows_for_every_pixel():
    """The statistics' saturation is computed with numpy, not Pillow's HSV conversion: the same
    numbers, so references built before the change still compare. A pixel's saturation depends
    on its largest and smallest channel only: every such pair, in every channel order, and
    the pictures the drift tests use."""
    pairs = [(high, low) for high in range(256) for low in range(high + 1)]
    pixels = np.array(
        [
            [(high, low, (high + low) // 2)[i] for i in order]
            for order in itertools.permutations(range(3))
            for high, low in pairs
        ],
        dtype=np.uint8,
    ).reshape(1, -1, 3)
    images = [Image.fromarray(pixels, "RGB")]
    images += photo_crops(10)
    for image in images:
        expected = np.asarray(image.convert("HSV"))[..., 1]
        assert np.array_equal(hsv_saturation(np.asarray(image)), expected)


def test_statistics_are_computed_for_the_configured_share_of_images():
    import asyncio

    from support import encode

    from service.serving.decoding import DecodePool
    from service.serving.model import LITE_MEAN, LITE_STD
    from service.serving.preprocessing import Preprocessor

    data = [encode(Image.new("RGB", (32, 24), (i, 100, 200)), "PNG") for i in range(400)]
    preprocessor = Preprocessor(32, 32, LITE_MEAN, LITE_STD, 40_000_000)

    def with_statistics(share: float) -> int:
        pool = DecodePool(statistics_share=share)
        try:
            admitted = pool.admit(pool.open(data, preprocessor), max_latency_s=60.0)
            decoded = asyncio.run(pool.decode(admitted, [preprocessor]))
        finally:
            pool.close()
        assert len(decoded) == len(data)  # every image is answered either way
        return sum(info.stats is not None for info, _ in decoded)

    assert with_statistics(1.0) == 400
    assert 60 <= with_statistics(0.25) <= 140  # 100 expected; the bounds are 4.6 sigma
