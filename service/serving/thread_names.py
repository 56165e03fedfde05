"""Names for the worker's busy threads as the operating system sees them (`top -H`, `ps -L`,
/proc/PID/task/TID/comm), where Python's own thread names do not reach.

The inference thread's name is inherited by the threads torch's CPU thread pool starts from it
(OpenMP starts a team per calling thread), so the CPU of the forward pass can be told apart
from the rest of the stack's from outside the process: the benchmark reads it that way.
"""

from __future__ import annotations

from setproctitle import setthreadtitle

INFERENCE = "bento-infer"  # the model's thread, and torch's threads started from it
DECODE = "bento-decode"  # the decode threads


def name_this_thread(name: str) -> None:
    """Name the calling thread (up to 15 characters on Linux)."""
    setthreadtitle(name)
