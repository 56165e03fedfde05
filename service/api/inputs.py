"""The checks every way into the classifier makes on what it is given: HTTP uploads and the
files an in-process caller passes, the batch's size and top_k, each refusal a ServiceError."""

from __future__ import annotations

from pathlib import Path

from fastapi import UploadFile

from ..errors import ServiceError
from ..settings import get_settings

limits = get_settings().limits


def check_size(size: int | None, field: str) -> None:
    if size is not None and size > limits.max_upload_bytes:
        raise ServiceError(
            "payload_too_large", f"{field} is {size} bytes; the limit is {limits.max_upload_bytes}"
        )


async def read_upload(upload: UploadFile, field: str) -> bytes:
    check_size(upload.size, field)
    return await upload.read()


def read_file(path: Path, field: str) -> bytes:
    check_size(path.stat().st_size, field)
    return path.read_bytes()


def check_batch_size(count: int) -> None:
    if count > limits.max_batch_images:
        raise ServiceError(
            "too_many_images",
            f"{count} images sent; the limit is {limits.max_batch_images} per request",
        )


def check_top_k(top_k: int) -> int:
    if not 1 <= top_k <= limits.max_top_k:
        raise ServiceError("invalid_top_k", f"top_k must be 1-{limits.max_top_k}, got {top_k}")
    return top_k
