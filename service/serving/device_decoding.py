"""JPEGs decoded where the model runs, a batch at a time (settings `jpeg_decode`).

On a GPU host the CPU, not the GPU, sets the pace: a decode thread spends milliseconds per
photo in libjpeg, and one process has two of them. nvJPEG decodes a whole list of JPEGs in one
call (torchvision's `decode_jpeg(list, device="cuda")`), so a JPEG that may be decoded there
skips the decode threads: the request path only reads its header (decoding.py), and the model
thread decodes the batch's JPEGs together, resizes and crops them on the device (those of one
size together), and runs them with the batch's other images (`decode_batch`). On the CPU the
same code decodes with libjpeg-turbo on the model thread: how the tests cover it, not how a CPU
host should serve (its decode threads overlap decoding with the forward pass).

What goes to the device is what it will surely decode the way Pillow would
(`decodable_on_device`): a baseline or progressive JPEG in RGB or grey (a CMYK JPEG's inversion
is Adobe's convention, left to Pillow), whole (ending in its EOI marker: a cut file must get
the same 400 as on the CPU path, not a grey-filled picture), with an EXIF orientation that is
applied here as Pillow's exif_transpose would. Anything the device still refuses is decoded by
Pillow on the model thread (`fallback` in bento_fleet_device_decoded_images_total), which
answers the same client error as the CPU path for a broken file: one bad image fails its own
request, never the batch.

The resize is torchvision's Resize + CenterCrop on the tensor (bilinear, antialiased): within
a few grey levels of the Pillow path's one-pass box resample, and the same top-1 on the test
photos. The pixel statistics for drift are not computed here: the images drawn for them
(drift.statistics_share, capped by drift.statistics_per_second) take the Pillow path, so every
statistic comes from one code. A tensor version of image_statistics matches Pillow's to 0.1%
on an image both decode in full (tried 2026-12-04), but Pillow decodes a JPEG twice the model's
size or more at a reduced scale (libjpeg's DCT scaling), and on those the device's full decode
gives a sharpness up to 26% lower: a fleet of CPU and GPU hosts would see its own hardware mix
as drift.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg

from .. import metrics
from ..errors import ServiceError
from .preprocessing import OpenedImage, Preprocessor

# torchvision 0.29 (pinned) marks its image codecs deprecated in favour of TorchCodec, whose
# PyPI wheel has no CUDA decoder; the call it warns about is the one wanted here.
warnings.filterwarnings(
    "ignore", message="The image decoding and encoding", category=DeprecationWarning
)

EXIF_ORIENTATION = 0x0112
DEVICE_MODES = frozenset({"RGB", "L"})
END_OF_IMAGE = b"\xff\xd9"


@dataclass(frozen=True)
class EncodedJpeg:
    """A JPEG to decode with its batch, on the model's device."""

    data: bytes = field(repr=False)
    orientation: int  # EXIF, 1-8 (1: as stored)
    position: int | None  # in its request, when the request had several images (messages)


def decodable_on_device(opened: OpenedImage, position: int | None) -> EncodedJpeg | None:
    """The upload as an EncodedJpeg, or None where Pillow must decode it (module docstring)."""
    image = opened.image
    if opened.info.format != "JPEG" or image.mode not in DEVICE_MODES:
        return None
    if not opened.data.rstrip(b"\0").endswith(END_OF_IMAGE):
        return None
    try:
        orientation = int(image.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - unreadable EXIF: Pillow's path copes and says why
        return None
    if not 1 <= orientation <= 8:
        orientation = 1  # as exif_transpose: an unknown value leaves the picture as stored
    return EncodedJpeg(opened.data, orientation, position)


def decode_batch(
    jpegs: list[EncodedJpeg], preprocessor: Preprocessor, device: torch.device
) -> list[torch.Tensor | ServiceError]:
    """Each JPEG as the model's input pixels (3 x S x S uint8 on `device`), or the client
    error that the Pillow path gives it."""
    encoded = [torch.frombuffer(bytearray(jpeg.data), dtype=torch.uint8) for jpeg in jpegs]
    try:
        decoded: list[torch.Tensor | None] = list(
            decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
        )
    except RuntimeError:  # the batch call returns nothing when one fails: find which
        decoded = [_decode_one(data, device) for data in encoded]
    pixels: list[torch.Tensor | ServiceError | None] = [None] * len(jpegs)
    oriented: dict[int, torch.Tensor] = {}
    for index, (jpeg, image) in enumerate(zip(jpegs, decoded, strict=True)):
        if image is None:
            pixels[index] = _with_pillow(jpeg, preprocessor, device)
            continue
        metrics.DEVICE_DECODED_IMAGES.labels("decoded").inc()
        oriented[index] = orient(image, jpeg.orientation)
    resampled = resample_all(list(oriented.values()), preprocessor)
    for index, image in zip(oriented, resampled, strict=True):
        pixels[index] = image
    return pixels  # type: ignore[return-value]  # every place is filled above


def _decode_one(data: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return None


def _with_pillow(
    jpeg: EncodedJpeg, preprocessor: Preprocessor, device: torch.device
) -> torch.Tensor | ServiceError:
    metrics.DEVICE_DECODED_IMAGES.labels("fallback").inc()
    try:
        return preprocessor(jpeg.data)[0].to(device)
    except ServiceError as error:
        return error if jpeg.position is None else error.about_image(jpeg.position)


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """A CHW image as EXIF `orientation` says to show it (PIL.ImageOps.exif_transpose)."""
    if orientation in (5, 6, 7, 8):  # stored on its side: swap the axes first
        image = image.transpose(1, 2)
    flips = {2: [2], 3: [1, 2], 4: [1], 5: [], 6: [2], 7: [1, 2], 8: [1]}.get(orientation, [])
    return image.flip(flips) if flips else image


# Images of one size are resampled together, up to this many pixels at a time: their float
# copies on the device (12 bytes a pixel) stay within some 800 MB however large the batch's images.
RESAMPLE_PIXELS_AT_ONCE = 1 << 26


def resample_all(images: list[torch.Tensor], preprocessor: Preprocessor) -> list[torch.Tensor]:
    """`resample` of each image, in order, computed a size at a time: a batch's photos mostly
    share a size, and on a GPU each operation of each image is a kernel launch that the model
    thread, one Python thread, pays for in CPU time; 32 photos of one size take the launches
    of one. Interpolation treats each image of a stack on its own, so the pixels are those of
    resampling each alone (tests/unit/test_device_decoding.py)."""
    by_size: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        by_size.setdefault(tuple(image.shape), []).append(index)
    resampled: list[torch.Tensor | None] = [None] * len(images)
    for shape, indices in by_size.items():
        per_chunk = max(1, RESAMPLE_PIXELS_AT_ONCE // (shape[1] * shape[2]))
        for start in range(0, len(indices), per_chunk):
            chunk = indices[start : start + per_chunk]
            stacked = torch.stack([images[i] for i in chunk])
            for i, pixels in zip(chunk, resample(stacked, preprocessor), strict=True):
                resampled[i] = pixels
    return resampled  # type: ignore[return-value]  # every place is filled above


def resample(images: torch.Tensor, preprocessor: Preprocessor) -> torch.Tensor:
    """N x C x H x W uint8 images of one size, resized so that their shorter side is
    resize_size, then centre-cropped to input_size (torchvision's Resize + CenterCrop), on
    their own device."""
    height, width = images.shape[2:]
    resized_width, resized_height, left, top = preprocessor.resized_geometry(width, height)
    resized = F.interpolate(
        images.float(),
        size=(resized_height, resized_width),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    size = preprocessor.input_size
    crop = resized[:, :, top : top + size, left : left + size]
    return crop.round_().clamp_(0, 255).to(torch.uint8)
