"""What this worker answered lately, by request id.

Feedback may arrive before the prediction log has flushed the request's rows (it flushes every
half second): the worker that answered can check it at once from here. Other workers read the
rows from the database instead.
"""

from __future__ import annotations

from collections import OrderedDict

from ..store.labels import ServedRequest

RECENT_REQUESTS = 100_000  # request ids remembered; far more than a flush interval's worth


class RecentRequests:
    def __init__(self, capacity: int = RECENT_REQUESTS):
        self.capacity = capacity
        self._served: OrderedDict[str, ServedRequest] = OrderedDict()

    def remember(self, request_id: str, variant: str, images: int) -> None:
        self._served[request_id] = ServedRequest(variant, images)
        self._served.move_to_end(request_id)
        while len(self._served) > self.capacity:
            self._served.popitem(last=False)

    def get(self, request_id: str) -> ServedRequest | None:
        return self._served.get(request_id)
