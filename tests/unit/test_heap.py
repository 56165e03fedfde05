"""What a worker's start built is frozen out of the garbage collector's sight once its models
are warm (service/serving/heap.py says why: each full collection walked all of it, a 200 ms
pause under load), and the start's garbage is collected first, not kept for good."""

import gc
import threading
import weakref

import pytest

from service.serving.heap import freeze_what_start_built
from service.serving.variant_set import VariantSet
from service.settings import Settings


class Node:
    """An object the collector tracks."""


def tracked(target) -> bool:
    """Whether the collector still walks `target` (frozen objects are in no generation)."""
    return any(candidate is target for candidate in gc.get_objects())


@pytest.fixture
def unfrozen():
    gc.unfreeze()
    yield
    gc.unfreeze()  # the tests that follow in this process see an ordinary collector


def test_the_start_is_frozen_after_its_garbage_is_collected(unfrozen):
    kept = Node()
    cycle = Node()
    cycle.itself = cycle  # garbage only the collector can free
    collected = weakref.ref(cycle)
    del cycle
    assert tracked(kept) and collected() is not None

    frozen = freeze_what_start_built()

    assert collected() is None  # collected, not frozen for the worker's life
    assert not tracked(kept)
    assert frozen == gc.get_freeze_count() > 0


def test_a_variant_serves_only_once_its_warm_model_is_frozen(unfrozen):
    variants = VariantSet(Settings(batching={"calibrate": False}), on_batch=lambda *_: None)
    loader = threading.Thread(target=lambda: variants.load())  # as the worker does
    loader.start()
    loader.join()
    (variant,) = variants
    assert variant.ready
    assert not tracked(variant.classifier)
    assert not tracked(next(variant.classifier.module.parameters()))
