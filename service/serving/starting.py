"""What stands in for the pipeline and the model operations while a worker builds them.

A worker builds both on a thread (service.py says why). Until they are built, everything that
needs them is refused as it is while the models load: 503 `model_loading` with Retry-After,
and /readyz says not ready. If building fails, the refusal is 503 `load_failed` with the
reason, for good, as when a model fails to load: the worker stays up to say why.
"""

from __future__ import annotations

from ..errors import ServiceError

RETRY_AFTER_S = 5  # what a refusal of a worker that is starting or loading tells clients


def not_ready(load_error: str | None, doing: str) -> ServiceError:
    """The refusal of a worker that cannot answer yet, whether it is still building (Starting)
    or still loading its models (the pipeline): `load_failed` with the reason, for good, once
    that failed; else `model_loading`, saying what it is `doing`, and when to ask again."""
    if load_error is not None:
        return ServiceError("load_failed", f"not ready: {load_error}")
    return ServiceError("model_loading", f"not ready: {doing}", retry_after=RETRY_AFTER_S)


class Starting:
    """The pipeline and the model operations of a worker that is still building them."""

    ready = False

    def __init__(self, error: str | None = None):
        self.error = error

    def require_ready(self) -> None:
        raise not_ready(self.error, "the service is starting")

    def __getattr__(self, name: str):
        # Any other member (admit, classify, model_card, summary, labels_changed, ...): the
        # refusal that says why there is none yet.
        self.require_ready()
