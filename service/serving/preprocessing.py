"""Uploaded bytes -> the model's input pixels (CHW uint8), or a ServiceError saying what is wrong.

The per-image work on the request path is kept to what must be done per image: decode, then one
resample straight to the model's input (the resize and the centre crop in one pass over the
output pixels only: `to_tensor`, which enlarges with OpenCV and shrinks with Pillow).
Normalising to floats is done per batch where the model runs (`normalize`, on its device), where
it is one vectorised operation instead of one per image, and the tensors that cross threads are
a quarter of the size.

Every decode failure is mapped to a client error here, so the API never answers 500 for a bad
upload: empty, not an image, truncated, an unsupported format, too many pixels (including
decompression bombs, which are refused from the header before any pixel is decoded).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ServiceError

try:
    import cv2
except ImportError:  # pinned in requirements.txt; left out of the GPU kit (scripts/gpu_kit.py)
    cv2 = None  # Pillow resamples every image: the same pixels within 1 of 255, slower
else:
    # OpenCV's own thread pool stays off: the resample runs on the decode threads, and a pool
    # started from them would compete with the model's threads for the same cores (torch's
    # did: docs/benchmark.md, "The resample on torch").
    cv2.setNumThreads(0)

# Pillow's names for the formats the API accepts (MPO is how Pillow names multi-picture JPEGs).
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF"})
WHITE = (255, 255, 255)


@dataclass(frozen=True)
class Preprocessor:
    input_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    max_pixels: int
    max_pixels_high_depth: int | None = None

    def __call__(self, data: bytes) -> tuple[torch.Tensor, DecodedInfo]:
        """One upload's input pixels (uint8, see to_tensor) and what it was."""
        image, info = self.decode(data)
        return self.to_tensor(image), info

    def open(self, data: bytes) -> OpenedImage:
        """Read and check the header only (see open_image): what the decode will cost is known
        before it is paid."""
        return open_image(data, self.max_pixels, self.resize_size, self.max_pixels_high_depth)

    def decode(
        self, data: bytes | OpenedImage, statistics: bool = True
    ) -> tuple[Image.Image, DecodedInfo]:
        """Decode + describe: the input statistics drift detection compares come from here
        (when `statistics`: they cost more than the decode of a small photo)."""
        opened = data if isinstance(data, OpenedImage) else self.open(data)
        image = load_image(opened)
        return image, replace(opened.info, stats=image_statistics(image) if statistics else None)

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """The model's input pixels, 3 x input_size x input_size uint8: the image resized so
        that its shorter side is resize_size, then centre-cropped (torchvision's Resize +
        CenterCrop), computed as one bilinear resample of the crop's source box.

        Pillow's bilinear filter widens with the scale when it shrinks (antialiasing, which
        torchvision's Resize does on PIL images too), and OpenCV's samples the 2 x 2 pixels
        around each point at any scale: the two agree (within 1 of 255) only where no side
        shrinks. There OpenCV's resample takes 0.13-0.15 ms for a 320 x 240 photo against
        Pillow's 0.67-0.72, each with its copy to an array (the 2-core CPU;
        docs/benchmark.md), so a box no larger than the output takes it."""
        box = self.crop_box(*image.size)
        no_side_shrinks = box[2] - box[0] <= self.input_size and box[3] - box[1] <= self.input_size
        if no_side_shrinks and cv2 is not None:
            pixels = enlarge(np.asarray(image), box, self.input_size)
        else:
            resampled = image.resize(
                (self.input_size, self.input_size), Image.Resampling.BILINEAR, box=box
            )
            pixels = np.array(resampled, dtype=np.uint8)
        return torch.from_numpy(pixels).permute(2, 0, 1)

    def resized_geometry(self, width: int, height: int) -> tuple[int, int, int, int]:
        """torchvision's Resize(resize_size) + CenterCrop(input_size) of a width x height
        image: the resized width and height, and the crop's left and top in them."""
        short, long = min(width, height), max(width, height)
        resized_long = int(self.resize_size * long / short)  # as torchvision rounds it
        if width <= height:
            resized_width, resized_height = self.resize_size, resized_long
        else:
            resized_width, resized_height = resized_long, self.resize_size
        left = round((resized_width - self.input_size) / 2.0)
        top = round((resized_height - self.input_size) / 2.0)
        return resized_width, resized_height, left, top

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The centre crop, in the source image's coordinates."""
        resized_width, resized_height, left, top = self.resized_geometry(width, height)
        scale_x, scale_y = width / resized_width, height / resized_height
        return (
            left * scale_x,
            top * scale_y,
            (left + self.input_size) * scale_x,
            (top + self.input_size) * scale_y,
        )

    def normalize(self, batch: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """N x 3 x H x W uint8 pixels -> the model's normalised input in `dtype`, on the
        batch's own device."""
        mean = torch.tensor(self.mean, device=batch.device, dtype=dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=batch.device, dtype=dtype).view(1, 3, 1, 1)
        return (batch.to(dtype) - mean) / std


def enlarge(pixels: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """HWC pixels of `box` resampled to size x size, bilinear, with the box no larger than the
    output (see Preprocessor.to_tensor). The map is Pillow's: output pixel x samples the source
    at box[0] + (x + 0.5) * scale - 0.5, edges clamped as Pillow clamps them."""
    left, top, right, bottom = box
    scale_x, scale_y = (right - left) / size, (bottom - top) / size
    output_to_source = np.array(
        [
            [scale_x, 0.0, left + 0.5 * scale_x - 0.5],
            [0.0, scale_y, top + 0.5 * scale_y - 0.5],
        ]
    )
    return cv2.warpAffine(
        pixels,
        output_to_source,
        (size, size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )


@dataclass(frozen=True)
class ImageStatistics:
    """Cheap descriptors of what a picture looks like, each 0-1 except sharpness."""

    brightness: float  # mean luma
    contrast: float  # standard deviation of luma
    saturation: float  # mean HSV saturation
    sharpness: float  # mean absolute Laplacian of luma (0-255 scale): blur lowers it


@dataclass(frozen=True)
class DecodedInfo:
    width: int
    height: int
    format: str
    bytes: int
    stats: ImageStatistics | None = None


STATS_SIZE = 256  # statistics are taken on a thumbnail: the same for any resolution, and cheap


def image_statistics(image: Image.Image) -> ImageStatistics:
    thumb = image.copy()
    thumb.thumbnail((STATS_SIZE, STATS_SIZE), Image.Resampling.BILINEAR)
    luma = np.asarray(thumb.convert("L"), dtype=np.float32)
    saturation = hsv_saturation(np.asarray(thumb)).astype(np.float32)
    laplacian = (
        4 * luma[1:-1, 1:-1] - luma[:-2, 1:-1] - luma[2:, 1:-1] - luma[1:-1, :-2] - luma[1:-1, 2:]
    )
    return ImageStatistics(
        brightness=round(float(luma.mean()) / 255.0, 5),
        contrast=round(float(luma.std()) / 255.0, 5),
        saturation=round(float(saturation.mean()) / 255.0, 5),
        sharpness=round(float(np.abs(laplacian).mean()) if laplacian.size else 0.0, 4),
    )


def hsv_saturation(rgb: np.ndarray) -> np.ndarray:
    """The S of Pillow's convert("HSV") (uint8), the same number for every pixel, for a fifth of
    its CPU: Pillow computes hue too, one pixel at a time, and that was half of what the
    statistics cost. As its rgb2hsv_row: (max - min) / max in single precision, times 255.0 in
    double, truncated; 0 where max is 0 (max == min)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    high = np.maximum(np.maximum(r, g), b)
    spread = high - np.minimum(np.minimum(r, g), b)
    ratio = np.divide(
        spread, high, out=np.zeros(high.shape, np.float32), where=high > 0, dtype=np.float32
    )
    return (ratio.astype(np.float64) * 255.0).astype(np.uint8)


@dataclass(frozen=True)
class OpenedImage:
    """An upload whose header was read and checked, nothing decoded yet: what the decode will
    produce (`decoded_pixels`: a JPEG is decoded at a reduced scale when that still covers the
    model's resize) and at what bit depth, so its cost can be estimated first."""

    image: Image.Image = field(repr=False)
    info: DecodedInfo
    data: bytes = field(repr=False)
    decoded_pixels: int
    high_depth: bool


def open_image(
    data: bytes,
    max_pixels: int,
    draft_size: int | None = None,
    max_pixels_high_depth: int | None = None,
) -> OpenedImage:
    """Read one upload's header and refuse what cannot or must not be decoded."""
    if not data:
        raise ServiceError("empty_body", "the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its own pixel limit; ours is checked below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ServiceError(
            "too_many_pixels", f"image refused as a decompression bomb: {exc}"
        ) from None
    except UnidentifiedImageError:
        raise ServiceError(
            "not_an_image",
            "the upload is not an image in a supported format "
            f"({', '.join(sorted(SUPPORTED_FORMATS - {'MPO'}))})",
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow knew the format but its header parser failed: a JPEG cut inside its markers
        # ("Truncated File Read"), any cut WebP ("could not create decoder object").
        raise _undecodable(data, "image", exc) from exc
    if image.format not in SUPPORTED_FORMATS:
        raise ServiceError(
            "unsupported_format",
            f"image format {image.format} is not supported; send one of "
            f"{', '.join(sorted(SUPPORTED_FORMATS - {'MPO'}))}",
        )
    width, height = image.size
    if width * height > max_pixels:
        raise ServiceError(
            "too_many_pixels",
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
        )
    high_depth = _high_depth(image)
    if max_pixels_high_depth and width * height > max_pixels_high_depth and high_depth:
        # A 16-bit PNG of 40 MP: 89 KB on the wire, about 1 GB of memory and 3 s to decode.
        raise ServiceError(
            "too_many_pixels",
            f"image is {width}x{height} = {width * height} pixels at more than 8 bits per "
            f"sample; the limit for such images is {max_pixels_high_depth}",
        )
    info = DecodedInfo(width, height, "JPEG" if image.format == "MPO" else image.format, len(data))
    decoded_pixels = width * height
    if draft_size and info.format == "JPEG":
        # Let libjpeg decode at a reduced scale (never below draft_size): a large photo
        # costs a fraction of a full decode and we resize it down anyway.
        image.draft("RGB", (draft_size, draft_size))
        decoded_pixels = image.size[0] * image.size[1]
    return OpenedImage(image, info, data, decoded_pixels, high_depth)


def load_image(opened: OpenedImage) -> Image.Image:
    """Decode an opened upload to an 8-bit RGB image with EXIF orientation applied."""
    image, info = opened.image, opened.info
    try:
        image.seek(0)  # GIF / multi-page TIFF: the first frame
        image.load()
        # In place: otherwise Pillow returns a copy of every upright image (the most of them).
        ImageOps.exif_transpose(image, in_place=True)
        return to_rgb(image)
    except ServiceError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _undecodable(opened.data, f"{info.format} image", exc) from exc


def decode_image(
    data: bytes,
    max_pixels: int,
    draft_size: int | None = None,
    max_pixels_high_depth: int | None = None,
) -> tuple[Image.Image, DecodedInfo]:
    """Decode one upload to an 8-bit RGB image with EXIF orientation applied."""
    opened = open_image(data, max_pixels, draft_size, max_pixels_high_depth)
    return load_image(opened), opened.info


def _high_depth(image: Image.Image) -> bool:
    """More than 8 bits per sample, read from the header (a 16-bit RGB PNG opens as "RGB")."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        return True
    return any(";16" in str(tile.args) or ";32" in str(tile.args) for tile in image.tile)


def _undecodable(data: bytes, what: str, exc: Exception) -> ServiceError:
    """truncated_image when the file was cut short, else not_an_image with Pillow's reason."""
    cut_short = "truncat" in str(exc).lower() or isinstance(exc, EOFError)
    if data[:4] == b"RIFF" and len(data) >= 8:  # WebP states its own length: shorter was cut
        cut_short = cut_short or int.from_bytes(data[4:8], "little") + 8 > len(data)
    if cut_short:
        return ServiceError("truncated_image", f"the {what} is truncated")
    return ServiceError("not_an_image", f"the {what} cannot be decoded: {exc}")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB the way a viewer would show it."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16/32-bit grayscale: scale to 8 bits (a plain convert("L") would clip at 255).
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if pixels.max(initial=0) > 255 else 255.0
        gray = np.clip(pixels * (255.0 / top), 0, 255).round().astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels become white, as on a web page, rather than their hidden colour.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
