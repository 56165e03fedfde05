"""What stands in for the pipeline and the model operations while a worker builds them.

A worker builds both on a thread (service.py says why). Until they are built, everything that
needs them is refused as it is while the models load: 503 `model_loading` with Retry-After,
and /readyz says not ready. If building fails, the refusal is 503 `load_failed` with the
reason, for good, as when a model fails to load: the worker stays up to say why.
"""

from __future__ import annotations

from ..errors import ServiceError


class Starting:
    """The pipeline and the model operations of a worker that is still building them."""

    ready = False

    def __init__(self, error: str | None = None):
        self.error = error

    def require_ready(self) -> None:
        if self.error is not None:
            raise ServiceError("load_failed", f"not ready: {self.error}")
        raise ServiceError("model_loading", "not ready: the service is starting", retry_after=5)

    def __getattr__(self, name: str):
        # Any other member (admit, classify, model_card, summary, labels_changed, ...): the
        # refusal that says why there is none yet.
        self.require_ready()
