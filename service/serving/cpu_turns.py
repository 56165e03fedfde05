"""On a CPU host, the forward pass and the decodes take turns on the cores instead of sharing them.

Why. Torch's forward pass is a few hundred short parallel regions whose threads, one per core,
wait for each other at every barrier (model_thread.py). A decode thread running beside it takes
one of those cores for a few milliseconds at a time, and every barrier meanwhile waits for the
scheduler while the other threads spin. The decode's CPU is not saved by overlapping it, since
the cores are all the forward pass's; it is paid twice. Measured served (EfficientNet-Lite0, 32
clients, 2-core host, 2026-12-06): the forward pass cost 29.6 CPU ms an image against 21.8 alone.
Lowering the decode threads' priority instead (nice 19) starved them: batches shrank to two
images, and throughput fell by a sixth.

How. `forward` holds the cores alone; `decode` shares them with other decodes. A forward pass
waits for the decodes running (a photo's takes a few milliseconds) and holds new ones back, so
it never waits behind a stream of them; the decodes it held back then run together once it is
done. Only the light lane takes turns: a heavy decode (up to half a second) would hold the
forward pass that long, so it keeps running beside it at nice 19 (decoding.py).

The other half is in the batcher (AdaptiveBatcher): in turns, the images of requests admitted
during a forward pass decode only after it, so a batch taken as soon as the model is free would
find none of them, and the next pass would run nearly empty. So while turns are on, a free model
waits for the images still decoding (a batch's worth at most, and never longer than
`DECODE_WAIT_S`) before it takes its batch.

Only while a model runs on the CPU (`enable`, by the variant set once a model is loaded there,
and `batching.cpu_turns`): on a GPU the forward pass leaves the cores to the decoders, and the
two should overlap.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

# The longest a free model waits for admitted images still decoding. A light image is one
# estimated under limits.heavy_decode_ms (100 ms); a 320x240 photo takes 1-3 ms, and 16 of them
# on two decode threads about 20. Past this the batch runs with what has arrived.
DECODE_WAIT_S = 0.05


class CpuTurns:
    def __init__(self) -> None:
        self.enabled = False
        self._changed = threading.Condition()
        self._decoding = 0  # decodes running
        self._forward = False  # a forward pass running
        self._forward_waiting = 0  # forward passes waiting for the decodes to finish

    def enable(self, on: bool = True) -> None:
        self.enabled = on

    @contextmanager
    def decode(self) -> Iterator[None]:
        """Around one decode: waits while a forward pass runs or waits to run."""
        if not self.enabled:
            yield
            return
        with self._changed:
            while self._forward or self._forward_waiting:
                self._changed.wait()
            self._decoding += 1
        try:
            yield
        finally:
            with self._changed:
                self._decoding -= 1
                if not self._decoding:
                    self._changed.notify_all()

    @contextmanager
    def forward(self) -> Iterator[None]:
        """Around one forward pass: waits for the decodes running, and holds new ones back."""
        if not self.enabled:
            yield
            return
        with self._changed:
            self._forward_waiting += 1
            try:
                while self._decoding:
                    self._changed.wait()
            finally:
                self._forward_waiting -= 1
            self._forward = True
        try:
            yield
        finally:
            with self._changed:
                self._forward = False
                self._changed.notify_all()


# The process's: one model thread, one decode pool.
turns = CpuTurns()
