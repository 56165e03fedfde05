"""The checks every way into the classifier makes on what it is given: HTTP uploads and the
files an in-process caller passes, the batch's size and top_k, each refusal a ServiceError."""

from __future__ import annotations

import re
from pathlib import Path

from starlette.datastructures import UploadFile
from starlette.requests import Request

from ..errors import ServiceError
from ..settings import get_settings

limits = get_settings().limits
DEFAULT_TOP_K = 5
INTEGER = re.compile(r"[+-]?[0-9]{1,9}")


async def read_form(request: Request, field: str, *, many: bool) -> tuple[list[bytes], int]:
    """The bytes of a multipart upload's `field` part (every such part, when `many`) and its
    top_k, checked in the order FastAPI's typed parameters checked them.

    The inference routes read their form here, with Starlette's parser, instead of declaring
    FastAPI parameters: FastAPI's dependency solving and validation made the app's CPU a
    request half as much again (0.63 ms against 0.41 in-process), and the event loop, which
    pays it, bounds what one worker serves (docs/benchmark.md). A malformed body is Starlette's
    MultiPartException, answered `invalid_field` by the app's error handlers."""
    async with request.form() as form:
        parts = form.getlist(field)
        if not parts:
            raise ServiceError("missing_field", f"missing required field {field!r}")
        if many:
            names = [f"{field}[{index}]" for index in range(len(parts))]
        else:
            parts, names = parts[-1:], [field]  # the last of repeated parts, as FastAPI took
        for part, name in zip(parts, names, strict=True):
            if not isinstance(part, UploadFile):
                raise ServiceError("invalid_field", f"{name}: expected a file, got a text field")
        top_k = parse_top_k(form.get("top_k"))
        if many:
            check_batch_size(len(parts))
        return [
            await read_upload(part, name) for part, name in zip(parts, names, strict=True)
        ], top_k


async def read_upload(upload: UploadFile, field: str) -> bytes:
    check_size(upload.size, field)
    return await upload.read()


def parse_top_k(value: UploadFile | str | None) -> int:
    if value is None:
        return DEFAULT_TOP_K
    if not isinstance(value, str):
        raise ServiceError("invalid_top_k", "top_k: expected an integer, got a file")
    if not INTEGER.fullmatch(value.strip()):
        raise ServiceError("invalid_top_k", f"top_k: expected an integer, got {value[:40]!r}")
    return check_top_k(int(value))


def check_size(size: int | None, field: str) -> None:
    if size is not None and size > limits.max_upload_bytes:
        raise ServiceError(
            "payload_too_large", f"{field} is {size} bytes; the limit is {limits.max_upload_bytes}"
        )


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
