"""All of a worker's torch compute runs on one thread (service/serving/model_thread.py says
why: a second calling thread starts a second OpenMP team, and on a small host the forward pass
then ran on about one core). The models are built, calibrated and warmed there, from the
loader's thread, and every variant's batches are stacked and run there."""

import asyncio
import threading

import torch

from service.serving import batching
from service.serving.model import Classifier
from service.serving.model_thread import model_executor
from service.serving.variant_set import VariantSet
from service.settings import Settings, VariantSettings


def test_models_are_built_warmed_and_run_on_the_one_model_thread(monkeypatch):
    threads: dict[str, set[int]] = {}

    def recorded(what, function):
        def wrapper(*args, **kwargs):
            threads.setdefault(what, set()).add(threading.get_ident())
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(Classifier, "__init__", recorded("build", Classifier.__init__))
    monkeypatch.setattr(Classifier, "warm_up", recorded("warm", Classifier.warm_up))
    monkeypatch.setattr(Classifier, "infer", recorded("infer", Classifier.infer))
    monkeypatch.setattr(batching.torch, "stack", recorded("stack", torch.stack))

    settings = Settings(
        batching={"calibrate": False},
        variants=[VariantSettings(name="a", weight=1), VariantSettings(name="b", weight=1)],
    )
    variants = VariantSet(settings, on_batch=lambda variant, stats: None)
    outcome = {}
    loader = threading.Thread(target=lambda: outcome.update(error=variants.load()))
    loader.start()
    loader.join()
    assert outcome == {"error": None}
    size = variants["a"].classifier.preprocessor.input_size
    image = torch.zeros(3, size, size, dtype=torch.uint8)

    async def classify_on_both():
        return [await variants[name].batcher.submit([image, image]) for name in ("a", "b")]

    answers = asyncio.run(classify_on_both())
    assert [len(rows) for rows in answers] == [2, 2]

    model_thread = model_executor().submit(threading.get_ident).result()
    assert set(threads) == {"build", "warm", "infer", "stack"}
    assert all(seen == {model_thread} for seen in threads.values()), threads
    assert model_thread not in (loader.ident, threading.get_ident())
