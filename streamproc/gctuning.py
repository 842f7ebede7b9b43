"""How often Python's cyclic garbage collector runs while streamproc's hot loops run.

CPython collects its youngest generation once allocations outnumber releases by the first
threshold (700 by default), and the older generations every tenth time. Decoding a chunk
allocates a dozen or so short-lived containers (the model, its field values, the record and its
context), so at the default the collector ran every few dozen chunks, and the chunks in flight,
surviving into the older generations, were walked again and again: about a quarter of the
consumer's CPU with a null sink. Nothing on the hot path builds reference cycles, so collecting
less often frees the same memory, later.
"""

from __future__ import annotations

import gc
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
