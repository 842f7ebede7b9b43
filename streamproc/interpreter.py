"""The interpreter settings streamproc's consumer loop runs under: garbage collection and GIL.

Both are process-wide, so both are changed only in the direction the loop needs, only while it
runs, and put back afterwards unless the application changed them meanwhile.

Garbage collection. CPython collects its youngest generation once allocations outnumber releases
by the first threshold (700 by default), and the older generations every tenth time. Decoding a
chunk allocates a dozen or so short-lived containers (the model, its field values, the record and
its context), so at the default the collector ran every few dozen chunks, and the chunks in
flight, surviving into the older generations, were walked again and again: about a quarter of the
consumer's CPU with a null sink. Nothing on the hot path builds reference cycles, so collecting
less often frees the same memory, later.

The GIL. The loop thread waits for realtime inside librdkafka without the GIL. When a chunk
arrives while a CPU-bound handler runs on a worker thread, the loop needs the GIL to take it, and
a thread that computes gives the GIL up only when another has waited the switch interval (5 ms
by default). That wait came on top of every realtime chunk's latency while bulk kept the handler
busy. A shorter interval hands the GIL to the waiting thread sooner; with no thread waiting it
changes nothing.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def young_gc_threshold(threshold: int) -> Iterator[None]:
    """Raise the youngest generation's collection threshold to ``threshold`` for the block.

    Never lowers it (an application that raised it further keeps its setting), leaves it alone
    for 0, and puts the previous thresholds back on exit unless someone changed them meanwhile.
    """
    before = gc.get_threshold()
    if threshold <= before[0]:  # 0 included
        yield
        return
    raised = (threshold, *before[1:])
    gc.set_threshold(*raised)
    try:
        yield
    finally:
        if gc.get_threshold() == raised:
            gc.set_threshold(*before)


@contextmanager
def gil_switch_interval(seconds: float) -> Iterator[None]:
    """Shorten the interpreter's thread switch interval to ``seconds`` for the block.

    Never lengthens it (an application that shortened it further keeps its setting), leaves it
    alone for 0, and puts the previous interval back on exit unless someone changed it meanwhile.
    """
    before = sys.getswitchinterval()
    if seconds <= 0 or seconds >= before:
        yield
        return
    sys.setswitchinterval(seconds)
    shortened = sys.getswitchinterval()  # as the interpreter stores it
    try:
        yield
    finally:
        if sys.getswitchinterval() == shortened:
            sys.setswitchinterval(before)
