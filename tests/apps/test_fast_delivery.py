"""faust's per-record delivery race (``wait_first(delivery, suspend_flow.wait())``) with the
fast path of Vigil's consumer (``apps.transport.Consumer.wait_first``).

A real faust Consumer (not connected: ``wait_first`` needs no broker) against the behaviour
of mode's own ``wait_first``, which the slow path still is: a delivery that blocks must stay
interruptible by a flow suspension, and its result or error must come out as before."""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from vigil.apps.transport import VigilApp


@pytest.fixture
def consumer() -> Iterator[Any]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # the consumer schedules its waits on the loop it was made in
    app = VigilApp(f"fast-{id(loop)}", bootstrap="127.0.0.1:1", web_enabled=False)
    assert app.consumer.loop is loop
    yield app.consumer
    asyncio.set_event_loop(None)
    loop.close()


def run(coro: Any) -> Any:
    return asyncio.get_event_loop().run_until_complete(coro)


def test_a_delivery_that_does_not_block_runs_in_the_callers_task(consumer):
    ran_in: list[Any] = []

    async def deliver() -> str:
        ran_in.append(asyncio.current_task())
        return "delivered"

    async def main() -> Any:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results = await consumer.wait_first(deliver(), consumer.suspend_flow.wait())
            gc.collect()  # an un-awaited, unclosed suspend_flow.wait() would warn here
        return results, asyncio.current_task(), caught

    results, caller, caught = run(main())
    assert ran_in == [caller]  # no task spawned for it
    assert results.results == ["delivered"] and not results.stopped
    assert not [w for w in caught if "never awaited" in str(w.message)]


def test_a_blocked_delivery_is_carried_on_to_its_end(consumer):
    steps: list[str] = []

    async def deliver(gate: asyncio.Future) -> int:
        steps.append("start")
        await asyncio.sleep(0)  # a bare yield
        value = await gate  # a future
        steps.append(f"got {value}")
        return value + 1

    async def main() -> Any:
        gate = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.01, gate.set_result, 41)
        return await consumer.wait_first(deliver(gate), consumer.suspend_flow.wait())

    results = run(main())
    assert steps == ["start", "got 41"]
    assert results.results == [42]


def test_a_blocked_delivery_is_cancelled_when_the_flow_is_suspended(consumer):
    seen: list[str] = []

    async def deliver(gate: asyncio.Future) -> None:
        try:
            await gate  # e.g. a full stream queue during a rebalance
            seen.append("delivered")
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        gate = loop.create_future()
        loop.call_later(0.01, consumer.suspend_flow.set)
        results = await consumer.wait_first(deliver(gate), consumer.suspend_flow.wait())
        await asyncio.sleep(0)  # let the cancellation reach the delivery
        return results

    results = run(main())
    assert seen == ["cancelled"]
    assert results.results == [True]  # the suspension won, as with mode's wait_first


@pytest.mark.parametrize("blocks_first", [False, True])
def test_a_delivery_error_propagates(consumer, blocks_first):
    async def deliver() -> None:
        if blocks_first:
            await asyncio.sleep(0)
        raise ValueError("bad record")

    async def main() -> None:
        await consumer.wait_first(deliver(), consumer.suspend_flow.wait())

    with pytest.raises(ValueError, match="bad record"):
        run(main())


def test_while_the_flow_is_suspended_deliveries_take_the_original_path(consumer):
    ran_in: list[Any] = []

    async def deliver() -> str:
        ran_in.append(asyncio.current_task())
        return "delivered"

    async def main() -> Any:
        consumer.suspend_flow.set()
        results = await consumer.wait_first(deliver(), consumer.suspend_flow.wait())
        return results, asyncio.current_task()

    results, caller = run(main())
    # mode's wait_first: the delivery runs in a task of its own, racing the suspension
    assert ran_in and ran_in[0] is not caller
    assert not results.stopped
