"""The risk worker's micro-batching (apps/batching.py), apart from faust: what goes into which
batch. The faust wiring (``linger_batches``) runs in every risk-worker test on the broker.

The sleeps here only order events, with wide margins (seconds against what a loop turn
takes); nothing asserts how fast anything is."""

from __future__ import annotations

import asyncio
import random

import pytest

from vigil.apps.batching import LingerBuffer


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_every_item_comes_out_once_in_order_in_batches_of_at_most_max():
    items = list(range(2_000))

    async def main() -> list[list[int]]:
        buffer = LingerBuffer(64, 0.01)
        rng = random.Random(3)

        async def produce() -> None:
            for item in items:
                await buffer.add(item)
                if rng.random() < 0.1:
                    await asyncio.sleep(0)

        producer = asyncio.ensure_future(produce())
        batches: list[list[int]] = []
        while sum(map(len, batches)) < len(items):
            batches.append(await buffer.take())
        await producer
        return batches

    batches = run(main())
    assert [i for batch in batches for i in batch] == items
    assert all(1 <= len(batch) <= 64 for batch in batches)
    assert max(map(len, batches)) == 64  # the producer outran the consumer at times


def test_a_full_buffer_goes_at_once_and_holds_the_producer_back():
    async def main() -> tuple[int, bool, list[int], int]:
        buffer = LingerBuffer(3, 3600.0)  # an hour: only fullness can end a take here

        async def produce() -> None:
            for item in range(5):
                await buffer.add(item)

        producer = asyncio.ensure_future(produce())
        for _ in range(10):
            await asyncio.sleep(0)
        held, blocked = len(buffer), not producer.done()
        first = await asyncio.wait_for(buffer.take(), 10)
        await asyncio.wait_for(producer, 10)  # released by the take
        return held, blocked, first, len(buffer)

    held, blocked, first, rest = run(main())
    assert held == 3 and blocked  # backpressure at max_
    assert first == [0, 1, 2]
    assert rest == 2


def test_the_linger_counts_from_the_first_item_not_from_the_take():
    # The consumer is busy for longer than the linger while item 0 arrives; its next take
    # must hand item 0 over at once, not wait a fresh linger (item 1, added half a linger
    # after that take began, would then be in the batch).
    async def main() -> list[int]:
        buffer = LingerBuffer(100, 1.0)
        await buffer.add(0)
        await asyncio.sleep(1.2)  # "processing the previous batch"

        async def late() -> None:
            await asyncio.sleep(0.5)
            await buffer.add(1)

        adder = asyncio.ensure_future(late())
        batch = await buffer.take()
        await adder
        return batch

    assert run(main()) == [0]


def test_a_lone_item_waits_for_company_until_its_linger_is_up():
    async def main() -> list[int]:
        buffer = LingerBuffer(100, 1.0)

        async def company() -> None:
            await asyncio.sleep(0.3)
            await buffer.add(1)

        adder = asyncio.ensure_future(company())
        await buffer.add(0)
        batch = await buffer.take()  # item 1 comes well within item 0's linger
        await adder
        return batch

    assert run(main()) == [0, 1]


def test_an_idle_take_returns_empty_so_the_caller_can_check_for_stop():
    assert run(LingerBuffer(10, 0.05).take(idle_s=0.05)) == []


@pytest.mark.parametrize("max_, linger", [(0, 0.1), (10, -1.0)])
def test_nonsense_settings_are_refused(max_, linger):
    with pytest.raises(ValueError, match="max_ >= 1"):
        LingerBuffer(max_, linger)
