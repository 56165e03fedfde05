"""A/B variants and shadow candidates: which model answers a request, and which shadow it.

Serving variants split live traffic by weight (90/10, 50/50, ...). A request that carries the
client key header is assigned by a hash of the key, so one client always meets the same
variant while the weights stay put; a request without it is assigned at random. Shadow
variants answer nobody: each mirrors its share of requests, and its answers only reach the
prediction log, for comparison with the model in place.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from dataclasses import dataclass, field
from itertools import accumulate

from ..settings import VariantSettings
from ..store.schema import Role
from .batching import AdaptiveBatcher
from .model import Classifier


def key_fraction(key: str) -> float:
    """A stable, uniform number in [0, 1) for a client key (the same on every host)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


@dataclass
class Variant:
    settings: VariantSettings
    batcher: AdaptiveBatcher
    classifier: Classifier | None = None
    batch_profile: dict[int, float] = field(default_factory=dict)
    load_error: str | None = None

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def shadow(self) -> bool:
        return self.settings.shadow

    @property
    def role(self) -> Role:
        return Role.SHADOW if self.settings.shadow else Role.SERVE

    @property
    def ready(self) -> bool:
        return self.classifier is not None and self.classifier.ready


class VariantRouter:
    """Picks the serving variant for a request and the shadows that mirror it."""

    def __init__(self, variants: list[VariantSettings], rng: random.Random | None = None):
        self.serving = [v for v in variants if not v.shadow and v.weight > 0]
        self.shadows = [v for v in variants if v.shadow]
        total = sum(v.weight for v in self.serving)
        self._bounds = list(accumulate(v.weight / total for v in self.serving))
        self._rng = rng or random.Random()

    @property
    def control(self) -> VariantSettings:
        """The variant in place: the largest share of traffic (the first on a tie)."""
        return max(self.serving, key=lambda v: v.weight)

    def choose(self, client_key: str | None = None) -> VariantSettings:
        point = key_fraction(client_key) if client_key else self._rng.random()
        index = min(bisect.bisect_right(self._bounds, point), len(self.serving) - 1)
        return self.serving[index]

    def shadows_for_request(self) -> list[VariantSettings]:
        return [v for v in self.shadows if self._rng.random() < v.shadow_share]
