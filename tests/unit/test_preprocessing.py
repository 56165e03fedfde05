"""Decoding and normalisation: every accepted format and mode, every rejection."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from support import PHOTOS, encode, photo, png16

from service.errors import ServiceError
from service.serving import preprocessing
from service.serving.model import IMAGENET_MEAN, IMAGENET_STD, LITE_MEAN, LITE_STD
from service.serving.preprocessing import Preprocessor, decode_image, enlarge

MAX_PIXELS = 40_000_000
RED = (200, 30, 30)


def lite(max_pixels=MAX_PIXELS) -> Preprocessor:
    return Preprocessor(224, 256, LITE_MEAN, LITE_STD, max_pixels)


def decoded_rgb(data: bytes) -> Image.Image:
    image, _ = decode_image(data, MAX_PIXELS)
    assert image.mode == "RGB"
    return image


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_every_supported_format_decodes_to_rgb(fmt):
    data = encode(Image.new("RGB", (64, 48), RED), fmt)
    image, info = decode_image(data, MAX_PIXELS)
    assert image.mode == "RGB" and image.size == (64, 48)
    assert (info.width, info.height, info.format, info.bytes) == (64, 48, fmt, len(data))
    r, g, b = image.getpixel((32, 24))
    assert r > 150 and g < 80 and b < 80  # still red after lossy codecs


def test_grayscale_and_bilevel_become_gray_rgb():
    assert decoded_rgb(encode(Image.new("L", (8, 8), 77), "PNG")).getpixel((0, 0)) == (77,) * 3
    assert decoded_rgb(encode(Image.new("1", (8, 8), 1), "PNG")).getpixel((0, 0)) == (255,) * 3


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    pixels = np.full((8, 8), 32768, dtype=np.uint16)  # mid-gray in 16 bits
    image = decoded_rgb(encode(Image.fromarray(pixels), "PNG"))
    assert image.getpixel((0, 0)) == (128, 128, 128)


def test_palette_image_keeps_its_colours():
    palette = Image.new("RGB", (8, 8), RED).convert("P", palette=Image.Palette.ADAPTIVE)
    assert decoded_rgb(encode(palette, "PNG")).getpixel((0, 0)) == RED


def test_transparent_pixels_become_white_not_their_hidden_colour():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (*RED, 255))
    image = decoded_rgb(encode(rgba, "PNG"))
    assert image.getpixel((1, 1)) == (255, 255, 255)
    assert image.getpixel((0, 0)) == RED


def test_palette_with_transparency_and_gray_alpha():
    gif = Image.new("P", (8, 8), 0)
    gif.putpalette([0, 0, 0, *RED] + [0] * 762)
    gif.putpixel((0, 0), 1)
    image = decoded_rgb(encode(gif, "GIF", transparency=0))
    assert image.getpixel((0, 0)) == RED and image.getpixel((4, 4)) == (255, 255, 255)
    la = decoded_rgb(encode(Image.new("LA", (8, 8), (10, 0)), "PNG"))
    assert la.getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_jpeg_converts_to_rgb():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    r, g, b = decoded_rgb(encode(cmyk, "JPEG", quality=95)).getpixel((8, 8))
    assert r > 200 and g < 60 and b < 60


def test_animated_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (8, 8), c).convert("P") for c in (RED, (20, 20, 220))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    r, _, b = decoded_rgb(data).getpixel((4, 4))
    assert r > b


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), RED)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    upright = decoded_rgb(encode(image, "JPEG", exif=exif))
    assert upright.size == (20, 40)


def test_normalisation_uses_the_models_own_mean_and_std():
    data = encode(Image.new("RGB", (300, 300), (255, 127, 0)), "PNG")
    pixels, _ = lite()(data)
    assert pixels.shape == (3, 224, 224) and pixels.dtype == torch.uint8
    tensor = lite().normalize(pixels[None], torch.float32)[0]
    expected = [(255 - 127) / 128, 0.0, (0 - 127) / 128]
    assert torch.allclose(tensor.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-4)
    imagenet = Preprocessor(224, 256, IMAGENET_MEAN, IMAGENET_STD, MAX_PIXELS)
    normalised = imagenet.normalize(imagenet(data)[0][None], torch.float32)
    assert normalised[0, 0, 0, 0] == pytest.approx((255 - 123.675) / 58.395, abs=1e-4)


@pytest.mark.parametrize("name", ["coffee.png", "chelsea.png", "rocket.jpg"])
@pytest.mark.parametrize("size", [(320, 240), (240, 320), (601, 400), (224, 224), (1000, 230)])
def test_one_resample_matches_torchvisions_resize_then_centre_crop(name, size):
    """The crop box resampled in one pass gives the pixels of Resize(256) + CenterCrop(224),
    up to rounding (measured: at most 1 of 255; a crop 4 pixels off differs by 5-18 on average)."""
    import torchvision.transforms.v2.functional as TF

    image = Image.open(io.BytesIO(photo(name))).convert("RGB").resize(size)
    reference = TF.center_crop(TF.resize(image, 256, TF.InterpolationMode.BILINEAR), 224)
    expected = torch.from_numpy(np.array(reference)).permute(2, 0, 1).float()
    actual = lite().to_tensor(image).float()
    assert actual.shape == expected.shape == (3, 224, 224)
    difference = (actual - expected).abs()
    assert difference.mean() < 0.5
    assert difference.max() <= 2


def pillows_resample(preprocessor: Preprocessor, image: Image.Image) -> torch.Tensor:
    box = preprocessor.crop_box(*image.size)
    resampled = image.resize((224, 224), Image.Resampling.BILINEAR, box=box)
    return torch.from_numpy(np.array(resampled)).permute(2, 0, 1)


@pytest.mark.parametrize("size", [(320, 240), (240, 320), (224, 224), (256, 256), (1000, 230)])
def test_where_no_side_shrinks_opencv_resamples_as_pillow_does(size, monkeypatch):
    enlarged = []
    monkeypatch.setattr(
        preprocessing, "enlarge", lambda *args: enlarged.append(args) or enlarge(*args)
    )
    image = Image.open(io.BytesIO(photo("rocket.jpg"))).convert("RGB").resize(size)
    actual = lite().to_tensor(image)
    assert enlarged, "OpenCV's resample was not used"
    difference = (actual.int() - pillows_resample(lite(), image).int()).abs()
    assert difference.max() <= 1 and difference.float().mean() < 0.25  # measured: 0.10-0.16


def test_without_opencv_pillow_resamples_every_image(monkeypatch):
    monkeypatch.setattr(preprocessing, "cv2", None)
    image = Image.open(io.BytesIO(photo("rocket.jpg"))).convert("RGB").resize((320, 240))
    assert torch.equal(lite().to_tensor(image), pillows_resample(lite(), image))


def test_where_a_side_shrinks_pillows_antialiased_resample_is_kept():
    """One-pixel stripes, shrunk: Pillow's filter averages them to grey; a 2 x 2 sample (OpenCV's
    bilinear) would alias them into bands."""
    stripes = np.zeros((480, 640, 3), np.uint8)
    stripes[:, ::2] = 255
    image = Image.fromarray(stripes)
    actual = lite().to_tensor(image)
    assert torch.equal(actual, pillows_resample(lite(), image))
    assert actual.float().std() < 20  # grey, where the aliased resample gives 0-255 bands
    aliased = enlarge(stripes, lite().crop_box(640, 480), 224)
    assert aliased.std() > 60


def test_large_jpeg_is_decoded_at_reduced_scale_with_same_output_shape():
    data = encode(Image.new("RGB", (2400, 1600), RED), "JPEG")
    tensor, info = lite()(data)
    assert tensor.shape == (3, 224, 224)
    assert (info.width, info.height) == (2400, 1600)  # the upload's own size is reported


def test_real_photo_crop_is_centred():
    tensor, info = lite()(photo("coffee.png"))
    assert (info.width, info.height, info.format) == (600, 400, "PNG")
    assert tensor.shape == (3, 224, 224)


def rejection(data: bytes, max_pixels=MAX_PIXELS) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        decode_image(data, max_pixels)
    return caught.value


def test_empty_upload():
    assert rejection(b"").code == "empty_body"


def test_text_is_not_an_image():
    error = rejection(b"hello, I am not a picture")
    assert error.code == "not_an_image" and error.status == 400 and "JPEG" in error.message


def test_truncated_jpeg_and_png():
    jpeg = photo("rocket.jpg")
    assert rejection(jpeg[: len(jpeg) // 3]).code == "truncated_image"
    png = photo("coffee.png")
    assert rejection(png[: len(png) // 2]).code == "truncated_image"


@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        ("JPEG", {"quality": 90}),
        ("JPEG", {"progressive": True}),
        ("PNG", {}),
        ("WEBP", {}),
        ("GIF", {}),
        ("TIFF", {}),
        ("BMP", {}),
    ],
)
def test_a_file_cut_anywhere_is_refused_with_a_4xx(fmt, options):
    # Issue 16: a JPEG cut inside its header and any cut WebP raised OSError (a 500).
    image = Image.open(PHOTOS / "coffee.png").convert("RGB").resize((160, 120))
    data = encode(image.convert("P") if fmt == "GIF" else image, fmt, **options)
    codes = {rejection(data[:cut]).code for cut in range(0, len(data), max(1, len(data) // 300))}
    assert codes <= {"empty_body", "not_an_image", "truncated_image"}
    assert "truncated_image" in codes


def test_a_cut_webp_says_truncated():
    webp = encode(Image.open(PHOTOS / "coffee.png").convert("RGB"), "WEBP")
    error = rejection(webp[: len(webp) // 2])
    assert (error.code, error.status) == ("truncated_image", 400)


@pytest.mark.parametrize("color_type", [2, 0], ids=["rgb48", "gray16"])
def test_high_depth_images_have_their_own_pixel_cap(color_type):
    data = png16(64, 48, color_type)
    image, info = decode_image(data, MAX_PIXELS, None, max_pixels_high_depth=64 * 48)
    assert (image.mode, info.width) == ("RGB", 64)  # at the cap: served, as 8-bit RGB
    with pytest.raises(ServiceError) as caught:
        decode_image(data, MAX_PIXELS, None, max_pixels_high_depth=64 * 48 - 1)
    assert caught.value.code == "too_many_pixels" and "more than 8 bits" in caught.value.message
    eight_bit = encode(Image.new("RGB", (64, 48)), "PNG")  # the same size at 8 bits: no cap
    assert decode_image(eight_bit, MAX_PIXELS, None, max_pixels_high_depth=1)[1].width == 64


def test_format_pillow_reads_but_we_do_not_serve():
    error = rejection(encode(Image.new("RGB", (16, 16)), "ICO"))
    assert (error.code, error.status) == ("unsupported_format", 415)
    assert "ICO" in error.message


def test_too_many_pixels_is_refused_from_the_header():
    data = encode(Image.new("1", (8000, 6000)), "PNG")  # 48 MP, a few KB on the wire
    error = rejection(data)
    assert (error.code, error.status) == ("too_many_pixels", 413)
    assert "8000x6000" in error.message


def test_decompression_bomb_is_refused():
    data = encode(Image.new("1", (20000, 10000)), "PNG")  # 200 MP in ~30 KB
    assert len(data) < 100_000
    assert rejection(data, max_pixels=10**10).code == "too_many_pixels"
