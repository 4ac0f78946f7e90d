"""Every API call, on the real engine."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, List

import pytest

import dreamos_bridge as db
from dreamos_bridge import BridgeManager, Message

from conftest import eventually


async def test_construct_every_way(tmp_path: Path) -> None:
    yaml = "bridge:\n  request_timeout: 5s\nmonitoring:\n  metrics_enabled: true\n"
    p = tmp_path / "bridge.yaml"
    p.write_text(yaml)
    for b in (
        BridgeManager(),
        BridgeManager({"bridge": {"request_timeout": "5s"}}),
        BridgeManager.from_yaml(yaml),
        BridgeManager.from_file(p),
        BridgeManager.from_file(str(p)),
    ):
        assert not b.running
        async with b:
            assert b.running
            b.register_route("agents.echo", lambda m: m.payload)
            assert await b.route("agents.echo", {"x": 1}) == {"x": 1}
        assert not b.running


async def test_bad_config_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(db.ConfigError) as e:
        BridgeManager({"bridge": {"no_such_key": 1}})
    assert e.value.code == "CONFIG"
    assert "no_such_key" in str(e.value)
    with pytest.raises(db.ConfigError):
        BridgeManager({"bridge": {"max_connections": "many"}})
    with pytest.raises(db.ConfigError):
        BridgeManager.from_yaml("bridge: [unclosed")
    with pytest.raises(db.ConfigError):
        BridgeManager.from_file(tmp_path / "missing.yaml")
    with pytest.raises(db.ConfigError):
        BridgeManager({"bridge": object()})  # type: ignore[dict-item]


async def test_lifecycle_and_shutdown_error() -> None:
    b = BridgeManager()
    with pytest.raises(db.ShutdownError):
        await b.route("agents.echo", 1)
    await b.initialize()
    await b.initialize()  # harmless
    b.register_route("agents.echo", lambda m: m.payload)
    assert await b.route("agents.echo", 1) == 1
    await b.shutdown()
    await b.shutdown()  # harmless
    with pytest.raises(db.ShutdownError) as e:
        await b.route("agents.echo", 1)
    assert e.value.code == "SHUTDOWN"
    with pytest.raises(db.ShutdownError):
        await b.publish("agents.echo", 1)
    with pytest.raises(db.ShutdownError):
        await b.initialize()
    assert (await b.health())["status"] == "down"


async def test_handlers_async_sync_and_decorator(bridge: BridgeManager) -> None:
    seen: List[Message] = []

    @bridge.handler("agents.async")
    async def a(msg: Message) -> Any:
        seen.append(msg)
        await asyncio.sleep(0)
        return {"async": msg.payload}

    @bridge.handler("agents.sync")
    def s(msg: Message) -> Any:
        return {"sync": msg.payload}

    assert a.__name__ == "a"  # the decorator returns the function
    assert await bridge.route("agents.async", [1, 2]) == {"async": [1, 2]}
    assert await bridge.route("agents.sync", "x") == {"sync": "x"}
    assert sorted(bridge.routes()) == ["agents.async", "agents.sync"]
    assert bridge.unregister_route("agents.sync")
    assert not bridge.unregister_route("agents.sync")
    with pytest.raises(db.RouteNotFoundError) as e:
        await bridge.route("agents.sync", 1)
    assert e.value.code == "ROUTE_NOT_FOUND"
    msg = seen[0]
    assert msg.destination == "agents.async" and msg.source is None


async def test_message_object_and_fields(bridge: BridgeManager) -> None:
    got: List[Message] = []
    bridge.register_route("agents.*", lambda m: got.append(m) or "ok")
    m = Message("agents.inspect", {"k": "v"}, headers={"x-trace": "abc"}, priority=5)
    assert m.destination == "agents.inspect" and m.payload == {"k": "v"}
    assert m.headers == {"x-trace": "abc"} and m.priority == 5 and m.source is None
    assert abs(m.timestamp - time.time()) < 60
    assert len(m.id) == 36
    assert await bridge.route(m, timeout=2.0) == "ok"
    h = got[0]
    assert h.id == m.id and h.payload == {"k": "v"} and h.headers == {"x-trace": "abc"} and h.priority == 5
    # headers= adds to a Message's own headers
    assert await bridge.route(Message("agents.h"), headers={"a": "b"}) == "ok"
    assert got[1].headers == {"a": "b"}
    assert "agents.inspect" in repr(m)


async def test_payload_shapes_round_trip(bridge: BridgeManager) -> None:
    bridge._n._register_rust_echo("rust.echo")
    values = [None, True, 0, -5, 2**63 - 1, 2**64 - 1, 1.5, "", "héllo", [], {}, {"a": [1, {"b": None}]}]
    for v in values:
        assert await bridge.route("rust.echo", v) == v
    assert await bridge.route("rust.echo", (1, 2)) == [1, 2]
    assert await bridge.route("rust.echo", b"\x00\xff") == b"\x00\xff"
    assert await bridge.route("rust.echo", bytearray(b"ab")) == b"ab"
    bridge.register_route("agents.bytes", lambda m: bytes(reversed(m.payload)))
    assert await bridge.route("agents.bytes", b"abc") == b"cba"
    # key order is kept
    d = {"z": 1, "a": 2, "m": 3}
    assert list((await bridge.route("rust.echo", d)).keys()) == ["z", "a", "m"]


async def test_publish_delivers_in_background(bridge: BridgeManager) -> None:
    done = asyncio.Event()
    got: List[Any] = []

    @bridge.handler("events.audit")
    async def audit(msg: Message) -> None:
        got.append(msg.payload)
        done.set()

    msg_id = await bridge.publish("events.audit", {"n": 1})
    assert isinstance(msg_id, str) and len(msg_id) == 36
    await asyncio.wait_for(done.wait(), 5)
    assert got == [{"n": 1}]


async def test_dead_letters_and_replay(bridge: BridgeManager) -> None:
    fail = True

    @bridge.handler("events.flaky")
    def flaky(msg: Message) -> str:
        if fail:
            raise RuntimeError("downstream broken")
        return "ok"

    msg_id = await bridge.publish("events.flaky", {"n": 1})
    await eventually(lambda: len(bridge.dead_letters()) == 1)
    dl = bridge.dead_letters()[0]
    assert dl["id"] == msg_id
    assert dl["error"]["code"] == "HANDLER_ERROR" and "downstream broken" in dl["error"]["message"]
    assert dl["message"]["payload"] == {"n": 1}
    with pytest.raises(db.HandlerError):
        await bridge.replay(msg_id)
    fail = False
    await bridge.replay(msg_id)
    assert bridge.dead_letters() == []
    with pytest.raises(db.InvalidMessageError):
        await bridge.replay(msg_id)
    with pytest.raises(db.InvalidMessageError):
        await bridge.replay("not-a-uuid")


async def test_observability(bridge: BridgeManager) -> None:
    bridge.register_route("agents.echo", lambda m: m.payload)
    await bridge.route("agents.echo", 1)
    assert isinstance(bridge.metrics(), dict)
    assert isinstance(bridge.metrics_text(), str)
    h = await bridge.health()
    assert h["status"] == "up" and h["services"] == {}
    assert "BridgeManager" in repr(bridge)


async def test_handler_error_carries_original_message(bridge: BridgeManager) -> None:
    @bridge.handler("agents.boom")
    async def boom(msg: Message) -> None:
        await asyncio.sleep(0)
        raise ValueError("boom: the tool broke")

    @bridge.handler("agents.sboom")
    def sboom(msg: Message) -> None:
        raise KeyError("missing")

    with pytest.raises(db.HandlerError) as e:
        await bridge.route("agents.boom", None)
    assert e.value.code == "HANDLER_ERROR"
    assert "boom: the tool broke" in str(e.value) and "ValueError" in str(e.value)
    assert isinstance(e.value.__cause__, ValueError)
    with pytest.raises(db.HandlerError, match="missing"):
        await bridge.route("agents.sboom", None)
    # the bridge keeps working
    bridge.register_route("agents.ok", lambda m: "fine")
    assert await bridge.route("agents.ok") == "fine"


async def test_handler_reply_must_be_json(bridge: BridgeManager) -> None:
    bridge.register_route("agents.bad", lambda m: object())
    with pytest.raises(db.HandlerError, match="object"):
        await bridge.route("agents.bad")


@pytest.mark.parametrize("bad", [0, -1.5, True, "1", float("nan")])
async def test_timeout_must_be_a_positive_number_of_seconds(bridge: BridgeManager, bad: Any) -> None:
    bridge.register_route("agents.fast", lambda m: m.payload)
    with pytest.raises(db.InvalidMessageError, match="timeout must be a positive number of seconds"):
        await bridge.route("agents.fast", 1, timeout=bad)
    assert await bridge.route("agents.fast", 1, timeout=1) == 1


async def test_timeout_is_bridge_timeout_and_builtin_timeout(bridge: BridgeManager) -> None:
    @bridge.handler("agents.slow")
    async def slow(msg: Message) -> str:
        await asyncio.sleep(10)
        return "late"

    with pytest.raises(db.BridgeTimeoutError) as e:
        await bridge.route("agents.slow", timeout=0.05)
    assert isinstance(e.value, TimeoutError) and e.value.code == "TIMEOUT"
    with pytest.raises(TimeoutError):
        await bridge.route("agents.slow", timeout=0.05)
    # a handler's own TimeoutError is a handler error, not the caller's deadline
    bridge.register_route("agents.own", lambda m: (_ for _ in ()).throw(TimeoutError("inner")))
    with pytest.raises(db.HandlerError, match="inner"):
        await bridge.route("agents.own", timeout=5)


async def test_rust_target_timeout() -> None:
    cfg = {"routes": [{"pattern": "rust.q", "max_concurrency": 1, "queue_size": 4}]}
    async with BridgeManager(cfg) as b:
        release = asyncio.Event()

        @b.handler("rust.q")
        async def hold(msg: Message) -> str:
            await release.wait()
            return "done"

        first = asyncio.ensure_future(b.route("rust.q", 1))
        await asyncio.sleep(0.05)
        with pytest.raises(db.BridgeTimeoutError):  # waited in the queue past its deadline
            await b.route("rust.q", 2, timeout=0.1)
        release.set()
        assert await first == "done"
