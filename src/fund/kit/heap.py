"""The garbage collector of a server worker: fewer young collections, and none of the startup
heap walked again.

CPython frees nearly every object of a request by reference counting; its cyclic collector is
for the rest. By default it collects the youngest generation whenever 700 more container
objects are alive than at its last collection, which many requests in flight exceed all the
time: survivors are promoted, and every so often a full collection walks the whole heap,
including the long-lived objects of startup (modules, the app, SQLAlchemy's and pydantic's
structures). Those pauses set a loaded worker's p99 (figures: docs/OPERATIONS.md, section 5,
"Workers and their garbage collector").

Once a worker has started, ``settled`` collects once and freezes what is left (``gc.freeze``:
later collections skip it; it lives as long as the process anyway) and raises the youngest
generation's threshold to ``YOUNG_THRESHOLD``. Memory stays bounded: cyclic garbage, which
only a collection frees, still triggers one after that many objects.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG_THRESHOLD = 10_000
"""Net new container objects between two collections of the youngest generation (700 by default)."""


@contextmanager
def settled() -> Iterator[None]:
    """The collector set for serving while inside; as it was again after (tests and the
    benchmark run apps in a process that outlives them)."""
    young, middle, old = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    try:
        yield
    finally:
        gc.set_threshold(young, middle, old)
        gc.unfreeze()
