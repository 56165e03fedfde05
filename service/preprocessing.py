"""Uploaded bytes -> a normalised CHW float tensor, or a ServiceError saying what is wrong.

Every decode failure is mapped to a client error here, so the API never answers 500 for a bad
upload: empty, not an image, truncated, an unsupported format, too many pixels (including
decompression bombs, which are refused from the header before any pixel is decoded).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ServiceError

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

    def __call__(self, data: bytes) -> tuple[torch.Tensor, DecodedInfo]:
        image, info = decode_image(data, self.max_pixels, draft_size=self.resize_size)
        return self.to_tensor(image), info

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        image = TF.resize(image, self.resize_size, interpolation=TF.InterpolationMode.BILINEAR)
        image = TF.center_crop(image, self.input_size)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())
        tensor = pixels.permute(2, 0, 1)
        return TF.normalize(tensor, list(self.mean), list(self.std))


@dataclass(frozen=True)
class DecodedInfo:
    width: int
    height: int
    format: str
    bytes: int


def decode_image(
    data: bytes, max_pixels: int, draft_size: int | None = None
) -> tuple[Image.Image, DecodedInfo]:
    """Decode one upload to an 8-bit RGB image with EXIF orientation applied."""
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
    info = DecodedInfo(width, height, "JPEG" if image.format == "MPO" else image.format, len(data))
    try:
        if draft_size and image.format in ("JPEG", "MPO"):
            # Let libjpeg decode at a reduced scale (never below draft_size): a large photo
            # costs a fraction of a full decode and we resize it down anyway.
            image.draft("RGB", (draft_size, draft_size))
        image.seek(0)  # GIF / multi-page TIFF: the first frame
        image.load()
        image = ImageOps.exif_transpose(image)
        return to_rgb(image), info
    except ServiceError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        if "truncated" in str(exc) or isinstance(exc, EOFError):
            raise ServiceError("truncated_image", f"the {info.format} image is truncated") from exc
        raise ServiceError(
            "not_an_image", f"the {info.format} image cannot be decoded: {exc}"
        ) from exc


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
