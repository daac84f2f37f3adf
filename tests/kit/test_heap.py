"""``fund.kit.heap``: a served worker's collector is settled while it runs, and only then."""

from __future__ import annotations

import gc

from fund.config import Settings
from fund.kit import heap
from fund.main import create_app


def test_settled_freezes_the_heap_and_raises_the_young_threshold_then_restores_both() -> None:
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    with heap.settled():
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, *before[1:])
        garbage: list[object] = []
        garbage.append(garbage)  # a cycle: only a collection frees it
        del garbage
        assert gc.collect() >= 1  # what is made after the freeze is still collected
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


async def test_a_worker_app_settles_its_heap_while_it_runs(settings: Settings) -> None:
    default = gc.get_threshold()
    worker = create_app(settings, settle_heap=True)
    async with worker.router.lifespan_context(worker):
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == heap.YOUNG_THRESHOLD
    assert gc.get_threshold() == default
    assert gc.get_freeze_count() == 0

    plain = create_app(settings)
    async with plain.router.lifespan_context(plain):
        assert gc.get_threshold() == default
        assert gc.get_freeze_count() == 0
