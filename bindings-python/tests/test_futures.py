"""What route() returns: a future (for asyncio) that is also a coroutine.

It starts the call at once; a reply that came without waiting is already in
it (a native done future); errors are raised where it is awaited; asyncio's
helpers (gather, create_task, wait_for, shield, run, run_until_complete) all
take it; cancelling a pending one cancels the call.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, List

import pytest

import dreamos_bridge as db
from dreamos_bridge import BridgeManager, Message

from conftest import count, eventually, require_totals


async def test_answer_without_waiting_is_a_done_future(bridge: BridgeManager) -> None:
    bridge.register_route("agents.sync", lambda m: {"got": m.payload})

    @bridge.handler("agents.async")
    async def echo(msg: Message) -> Any:
        return msg.payload

    bridge._n._register_rust_echo("rust.echo")
    for dest, want in (("agents.sync", {"got": 1}), ("agents.async", 1), ("rust.echo", 1)):
        f = bridge.route(dest, 1)
        assert asyncio.isfuture(f) and asyncio.iscoroutine(f) and f.done(), dest
        assert not f.cancelled() and f.exception() is None and f.result() == want
        assert await f == want
        assert await f == want  # like a done future, it can be awaited again
        assert f.get_loop() is asyncio.get_running_loop()
        assert not f.cancel() and not f.cancelled()
    # every helper takes it
    assert await asyncio.gather(*[bridge.route("agents.async", i) for i in range(5)]) == list(range(5))
    assert await asyncio.create_task(bridge.route("rust.echo", "t")) == "t"
    assert await asyncio.wait_for(bridge.route("agents.sync", 2), 5) == {"got": 2}
    assert await asyncio.shield(bridge.route("rust.echo", "s")) == "s"
    # a tuple reply is the value, not StopIteration's arguments
    assert await bridge.route("agents.sync", (1, 2)) == {"got": (1, 2)}
    assert await asyncio.create_task(bridge.route("agents.async", (3,))) == (3,)
    # done callbacks run soon, with the future, as asyncio's do
    seen: List[Any] = []
    f = bridge.route("rust.echo", "cb")
    f.add_done_callback(lambda d: seen.append(d.result()))
    assert seen == [] and f.remove_done_callback(print) == 0
    await asyncio.sleep(0)
    assert seen == ["cb"]
    # asyncio.wait() refuses coroutines, as it did when route() was a coroutine function
    done, _ = await asyncio.wait([asyncio.create_task(bridge.route("agents.async", 3))])
    assert [d.result() for d in done] == [3]


async def test_errors_are_raised_at_await(bridge: BridgeManager) -> None:
    def boom(msg: Message) -> Any:
        raise ValueError("boom")

    bridge.register_route("agents.boom", boom)
    f = bridge.route("agents.boom", 1)  # does not raise here
    g = bridge.route("no.such.route", 1)
    with pytest.raises(db.HandlerError) as e:
        await f
    assert "ValueError: boom" in str(e.value)
    assert isinstance(e.value.__cause__, ValueError)
    with pytest.raises(db.RouteNotFoundError):
        await g
    assert isinstance(g.exception(), db.RouteNotFoundError)
    with pytest.raises(db.RouteNotFoundError):
        g.result()
    with pytest.raises(db.RouteNotFoundError):
        await asyncio.gather(bridge.route("no.such.route", 1))
    assert [type(e) for e in await asyncio.gather(g, return_exceptions=True)] == [db.RouteNotFoundError]
    with pytest.raises(db.HandlerError):
        await asyncio.create_task(bridge.route("agents.boom", 1))
    # text that is not valid UTF-8 (a lone surrogate), as a value or a key
    for bad in ("\ud800", {"\ud800": 1}, ["ok", "x\udfff"]):
        with pytest.raises(db.InvalidMessageError) as ie:
            await bridge.route("agents.boom", bad)
        assert "UTF-8" in str(ie.value)
    with pytest.raises(db.InvalidMessageError):
        await bridge.route("agents.\ud800", 1)


async def test_suspending_handler_runs_in_a_task_and_cancels(bridge: BridgeManager) -> None:
    started = asyncio.Event()
    cancelled: List[bool] = []

    @bridge.handler("agents.slow")
    async def slow(msg: Message) -> Any:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return msg.payload

    @bridge.handler("agents.nap")
    async def nap(msg: Message) -> Any:
        await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        return msg.payload

    assert await bridge.route("agents.nap", "zz") == "zz"
    assert await asyncio.create_task(bridge.route("agents.nap", "t")) == "t"
    before = count(require_totals(bridge), "cancelled")
    f = bridge.route("agents.slow", 1)
    assert not f.done()
    await asyncio.wait_for(started.wait(), 5)
    f.cancel()
    with pytest.raises(asyncio.CancelledError):
        await f
    assert cancelled == [True]
    await eventually(lambda: count(require_totals(bridge), "cancelled") == before + 1)
    with pytest.raises(db.BridgeTimeoutError):
        await bridge.route("agents.slow", 1, timeout=0.05)


async def test_shutdown_fails_a_suspended_handler_call_with_shutdown_and_cancels_it() -> None:
    # The handler suspends on this loop; once the grace period is over,
    # shutdown gives up on it: the handler is cancelled, the caller gets
    # ShutdownError, and by the time shutdown returns the call is over (it
    # used to run on, shutdown waiting several seconds for it in vain).
    b = BridgeManager({"bridge": {"shutdown_grace": "100ms", "request_timeout": "60s"}})
    await b.initialize()
    started = asyncio.Event()
    cancelled: List[bool] = []

    @b.handler("agents.slow")
    async def slow(msg: Message) -> Any:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return "late"

    f = asyncio.ensure_future(b.route("agents.slow", 1))
    await asyncio.wait_for(started.wait(), 10)
    await b.shutdown()
    assert f.done()
    with pytest.raises(db.ShutdownError):
        f.result()
    assert cancelled == [True]
    assert require_totals(b)["errors"]["SHUTDOWN"] == 1


async def test_cancelling_a_pending_future_drops_the_engine_work() -> None:
    cfg = {"routes": [{"pattern": "rust.q", "max_concurrency": 1, "queue_size": 8}]}
    async with BridgeManager(cfg) as b:
        release = asyncio.Event()

        @b.handler("rust.q")
        async def hold(msg: Message) -> Any:
            await release.wait()
            return msg.payload

        first = b.route("rust.q", 1)
        queued = b.route("rust.q", 2)  # waits on tokio for a slot
        assert not queued.done()
        before = count(require_totals(b), "cancelled")
        assert queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        await eventually(lambda: count(require_totals(b), "cancelled") == before + 1)
        # the same through a task driving it as a coroutine
        task = asyncio.create_task(b.route("rust.q", 4))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await eventually(lambda: count(require_totals(b), "cancelled") == before + 2)
        release.set()
        assert await first == 1
        assert await b.route("rust.q", 3) == 3


def test_outside_a_running_loop_route_returns_a_coroutine() -> None:
    b = BridgeManager()
    asyncio.run(b.initialize())
    b._n._register_rust_echo("rust.echo")
    assert asyncio.run(b.route("rust.echo", {"x": 1})) == {"x": 1}

    # a done reply made inside a loop, handed to run_until_complete
    loop = asyncio.new_event_loop()
    try:

        async def start() -> Any:
            return b.route("rust.echo", 5)

        done = loop.run_until_complete(start())
        assert loop.run_until_complete(done) == 5
    finally:
        loop.close()

    # and from a thread without a loop, into a loop running elsewhere
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever)
    t.start()
    try:
        fut = asyncio.run_coroutine_threadsafe(b.route("rust.echo", 2), loop)
        assert fut.result(10) == 2
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)
        loop.close()
    asyncio.run(b.shutdown())


async def test_kept_messages_and_results_survive_later_calls(bridge: BridgeManager) -> None:
    """Messages and finished futures reuse freed memory: one still referenced is never reused."""
    import gc

    kept: List[Message] = []

    def keep(m: Message) -> Any:
        if m.payload % 2 == 0:
            kept.append(m)
        return {"n": m.payload}

    bridge.register_route("agents.keep.>", keep)
    futures = []
    for i in range(600):
        f = bridge.route(f"agents.keep.d{i}", i, headers={"h": str(i)})
        if i % 3 == 0:
            futures.append((i, f))
        assert await f == {"n": i}
        gc.collect() if i % 100 == 0 else None
    assert [m.payload for m in kept] == list(range(0, 600, 2))
    assert [m.destination for m in kept] == [f"agents.keep.d{i}" for i in range(0, 600, 2)]
    assert [m.headers for m in kept] == [{"h": str(i)} for i in range(0, 600, 2)]
    assert len({m.id for m in kept}) == len(kept)
    assert all(f.result() == {"n": i} for i, f in futures)


class _Agent(BridgeManager):
    """A subclass with its own __init__ and attributes (route is inherited from the native base)."""

    def __init__(self, name: str) -> None:
        super().__init__({"bridge": {"request_timeout": "5s"}})
        self.name = name


async def test_a_subclass_of_bridgemanager_works() -> None:
    agent = _Agent("a1")
    async with agent:
        agent.register_route("agents.echo", lambda m: m.payload)
        assert agent.name == "a1" and isinstance(agent, BridgeManager)
        assert await agent.route("agents.echo", {"x": 1}) == {"x": 1}
        assert await agent.route("agents.echo", payload=2, timeout=1.0) == 2
