"""Who may change state: an API key in `Authorization: Bearer <key>`, checked against the
SHA-256 digests of auth.api_keys.

Correctness and timing: the presented key is hashed once, and its digest compared with every
stored digest by hmac.compare_digest, with no early exit, so the time taken says neither which
stored key came closest nor at which byte a guess went wrong. Hashing first also means the
comparison runs over fixed-length digests whatever the caller sends. No key configured is not
an open door: the endpoint refuses everyone, naming the setting."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from fastapi import Request

from ..errors import ServiceError
from ..settings import ApiKey

SCHEME = "bearer"


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A fresh key: 32 random bytes, URL-safe, prefixed so that it is recognisable in a leak."""
    return "bfk_" + secrets.token_urlsafe(32)


def caller(request: Request, keys: list[ApiKey], action: str) -> str:
    """The name of the key that authorises `action`, or a 401/403 ServiceError."""
    if not keys:
        raise ServiceError(
            "forbidden", f"{action} needs an API key, and none is configured (auth.api_keys)"
        )
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != SCHEME or not presented.strip():
        raise ServiceError(
            "unauthorized", f"{action} needs an API key: send 'Authorization: Bearer <key>'"
        )
    digest = key_digest(presented.strip()).encode()
    holder = None
    for key in keys:
        if hmac.compare_digest(digest, key.sha256.encode()) and holder is None:
            holder = key.name
    if holder is None:
        raise ServiceError("forbidden", f"the API key sent is not allowed to {action}")
    return holder
