"""Each exception class, raised by its real cause; bad inputs never break the bridge."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

import dreamos_bridge as db
from dreamos_bridge import BridgeManager, Message

from conftest import API_KEY, security_config


def test_hierarchy_and_codes() -> None:
    classes = {
        "CONFIG": db.ConfigError,
        "INVALID_MESSAGE": db.InvalidMessageError,
        "UNAUTHENTICATED": db.AuthenticationError,
        "FORBIDDEN": db.AuthorizationError,
        "ROUTE_NOT_FOUND": db.RouteNotFoundError,
        "RATE_LIMITED": db.RateLimitedError,
        "QUEUE_FULL": db.QueueFullError,
        "TIMEOUT": db.BridgeTimeoutError,
        "SERVICE_UNAVAILABLE": db.ServiceUnavailableError,
        "UPSTREAM_ERROR": db.UpstreamError,
        "HANDLER_ERROR": db.HandlerError,
        "SHUTDOWN": db.ShutdownError,
        "INTERNAL": db.InternalError,
    }
    assert sorted(classes) == sorted(db._native.ERROR_CODES)
    for code, cls in classes.items():
        assert issubclass(cls, db.BridgeError) and cls.code == code
    assert issubclass(db.BridgeTimeoutError, TimeoutError)
    e = db.BridgeTimeoutError("late")
    assert str(e) == "late" and e.message == "late"


@pytest.mark.parametrize(
    "dest",
    ["", "bad..subject", "spaces in.it", "agents.*", "agents.>", "a" * 5000, "ünïcode.x"],
)
async def test_invalid_destination(bridge: BridgeManager, dest: str) -> None:
    with pytest.raises(db.InvalidMessageError) as e:
        await bridge.route(dest, 1)
    assert e.value.code == "INVALID_MESSAGE"


async def test_bad_payloads(bridge: BridgeManager) -> None:
    bridge.register_route("agents.echo", lambda m: m.payload)
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    cyclic: Any = []
    cyclic.append(cyclic)
    for bad, needle in [
        (object(), "object"),
        ({"a": {1, 2}}, "set"),
        ({1: "int key"}, "key"),
        (float("nan"), "NaN"),
        (10**40, "64-bit"),
        ([b"nested bytes"], "bytes"),
        (deep, "deep"),
        (cyclic, "deep"),
        ("x" * (64 * 1024 * 1024), ""),
    ]:
        with pytest.raises(db.InvalidMessageError) as e:
            await bridge.route("agents.echo", bad)
        assert needle in str(e.value), str(e.value)
    assert await bridge.route("agents.echo", {"still": "works"}) == {"still": "works"}


async def test_bad_headers_and_arguments(bridge: BridgeManager) -> None:
    bridge.register_route("agents.echo", lambda m: m.payload)
    for headers in ({"x": "a\r\nInjected: 1"}, {"x": "a\nb"}, {"bad name": "v"}, {"x": 1}, ["x"]):
        with pytest.raises(db.InvalidMessageError):
            await bridge.route("agents.echo", 1, headers=headers)  # type: ignore[arg-type]
    for kwargs in ({"timeout": -1}, {"timeout": 0}, {"timeout": "soon"}, {"timeout": float("inf")}):
        with pytest.raises(db.InvalidMessageError):
            await bridge.route("agents.echo", 1, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(db.InvalidMessageError):
        await bridge.route(123, 1)  # type: ignore[arg-type]
    with pytest.raises(db.InvalidMessageError):
        await bridge.route(Message("agents.echo", 1), 2)
    with pytest.raises(db.InvalidMessageError):
        Message(42)  # type: ignore[arg-type]
    with pytest.raises(db.InvalidMessageError):
        Message("agents.echo", priority="high")  # type: ignore[arg-type]
    with pytest.raises(db.InvalidMessageError):
        await bridge.route(Message("agents.echo", headers={"a\r": "b"}))
    with pytest.raises(db.AuthenticationError):
        await bridge.route("agents.echo", 1, token=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        bridge.register_route("agents.x", "not callable")  # type: ignore[arg-type]
    with pytest.raises(db.BridgeError):
        bridge.register_route("bad..pattern", lambda m: 1)
    with pytest.raises(db.InvalidMessageError):
        await bridge.publish("agents.echo", object())
    assert await bridge.route("agents.echo", "fine") == "fine"


async def test_lone_surrogates_in_headers_destinations_and_tokens_are_typed_errors(bridge: BridgeManager) -> None:
    # Text that is not valid UTF-8 cannot travel: the caller's bad input gets
    # the bridge's typed error, never Python's bare UnicodeEncodeError.
    bridge.register_route("agents.echo", lambda m: m.payload)
    for headers in ({"x": "\ud800"}, {"\udfff": "v"}):
        with pytest.raises(db.InvalidMessageError) as ie:
            await bridge.route("agents.echo", 1, headers=headers)
        assert "UTF-8" in str(ie.value)
        with pytest.raises(db.InvalidMessageError):
            await bridge.publish("agents.echo", 1, headers=headers)
        with pytest.raises(db.InvalidMessageError):
            Message("agents.echo", 1, headers=headers)
        with pytest.raises(db.InvalidMessageError):
            await bridge.route(Message("agents.echo", 1), headers=headers)
    with pytest.raises(db.InvalidMessageError) as ie:
        Message("agents.\ud800", 1)
    assert "UTF-8" in str(ie.value)
    with pytest.raises(db.AuthenticationError) as ae:
        await bridge.route("agents.echo", 1, token="\ud800")
    assert "UTF-8" in str(ae.value)
    with pytest.raises(db.AuthenticationError):
        await bridge.publish("agents.echo", 1, token="tok\udc00")
    assert await bridge.route("agents.echo", "fine", headers={"x": "ü"}) == "fine"


async def test_lone_surrogates_in_patterns_config_and_authorize_are_typed_errors(tmp_path: Path) -> None:
    # Every text argument gets the bridge's typed error naming it, never
    # Python's bare UnicodeEncodeError; the bridge keeps working.
    with pytest.raises(db.ConfigError) as ce:
        BridgeManager.from_yaml("bridge:\n  shutdown_grace: 1s\n# \ud800\n")
    assert "text" in str(ce.value) and "UTF-8" in str(ce.value)
    # A path that no file-system encoding can carry is the caller's bad input too.
    with pytest.raises(db.ConfigError) as ce:
        BridgeManager.from_file(str(tmp_path / "bridge\ud800.yaml"))
    assert "path" in str(ce.value)
    # A name decoded with surrogateescape (not UTF-8 on disk) is a real file: it opens.
    odd = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"bridge-\xff.yaml"))
    Path(odd).write_text("bridge:\n  shutdown_grace: 1s\n")
    BridgeManager.from_file(odd)
    BridgeManager.from_file(Path(odd))
    # A config dict's bad text is named as the configuration, not a payload.
    with pytest.raises(db.ConfigError) as ce:
        BridgeManager({"bridge": {"host": "\udfff"}})
    assert "configuration" in str(ce.value) and "payload" not in str(ce.value)

    async with BridgeManager(security_config()) as b:
        with pytest.raises(db.InvalidMessageError) as ie:
            b.register_route("agents.\ud800", lambda m: m.payload)
        assert "pattern" in str(ie.value) and "UTF-8" in str(ie.value)
        with pytest.raises(db.InvalidMessageError) as ie:
            b.unregister_route("agents.\ud800")
        assert "pattern" in str(ie.value)
        token = await b.authenticate({"api_key": API_KEY})
        with pytest.raises(db.InvalidMessageError) as ie:
            await b.authorize(token, "agents.\ud800")
        assert "resource" in str(ie.value)
        with pytest.raises(db.InvalidMessageError) as ie:
            await b.authorize(token, "agents.x", "route\udc00")
        assert "action" in str(ie.value)
        with pytest.raises(db.InvalidMessageError) as ie:
            await b.replay("\ud800")
        assert "id" in str(ie.value)
        b.register_route("agents.echo", lambda m: m.payload)
        assert await b.authorize(token, "agents.echo")
        assert await b.route("agents.echo", "fine", token=token) == "fine"
        assert b.unregister_route("agents.echo")


async def test_credentials_with_lone_surrogates_are_named_without_the_secret() -> None:
    async with BridgeManager(security_config()) as b:
        for creds in ({"api_key": "dk_secret_\ud800"}, {"dk_secret_\ud800": "x"}):
            with pytest.raises(db.AuthenticationError) as ae:
                await b.authenticate(creds)
            text = str(ae.value)
            assert "credentials" in text and "UTF-8" in text, text
            assert "payload" not in text and "dk_secret" not in text, text
        with pytest.raises(db.AuthenticationError) as ae:
            await b.authenticate({"api_key": object()})  # type: ignore[dict-item]
        assert "credentials" in str(ae.value) and "payload" not in str(ae.value)
        assert (await b.authenticate({"api_key": API_KEY})).principal == "planner"


async def test_queue_full() -> None:
    cfg = {"routes": [{"pattern": "tools.slow", "max_concurrency": 1, "queue_size": 1}]}
    async with BridgeManager(cfg) as b:
        release = asyncio.Event()

        @b.handler("tools.slow")
        async def slow(msg: Message) -> Any:
            await release.wait()
            return msg.payload

        first = asyncio.ensure_future(b.route("tools.slow", 1))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(b.route("tools.slow", 2))
        await asyncio.sleep(0.05)
        with pytest.raises(db.QueueFullError) as e:
            await b.route("tools.slow", 3, timeout=0.2)
        assert e.value.code == "QUEUE_FULL"
        release.set()
        assert await first == 1
        assert await second == 2  # the queued call went through once there was room


async def test_rate_limited_route() -> None:
    cfg = {
        "bridge": {"rate_limit_mode": "reject"},
        "routes": [{"pattern": "tools.limited", "rate_limit": "1/min", "burst": 1}],
    }
    async with BridgeManager(cfg) as b:
        b.register_route("tools.limited", lambda m: "ok")
        assert await b.route("tools.limited") == "ok"
        with pytest.raises(db.RateLimitedError) as e:
            await b.route("tools.limited")
        assert e.value.code == "RATE_LIMITED"
        assert isinstance(e.value.retry_after, float) and 0 < e.value.retry_after <= 60


async def test_handler_error_after_shutdown_is_shutdown() -> None:
    b = BridgeManager({"bridge": {"shutdown_grace": "100ms"}})
    await b.initialize()
    b._n._register_rust_echo("rust.echo")
    await b.shutdown()
    with pytest.raises(db.ShutdownError):
        await b.route("rust.echo", 1)


async def test_rust_panic_becomes_internal_error(bridge: BridgeManager) -> None:
    """A panic in Rust (on the caller's thread, or in a future on tokio) reaches the
    caller as InternalError; the interpreter and the bridge keep working."""
    for sync in (True, False):
        with pytest.raises(db.InternalError) as e:
            await db._wait(bridge._n._test_panic(db._completer(), sync))
        assert e.value.code == "INTERNAL"
        assert "panic" in str(e.value), str(e.value)
    bridge._n._register_rust_echo("rust.echo")
    assert await bridge.route("rust.echo", {"after": "panic"}) == {"after": "panic"}
    assert bridge.running


async def test_payload_limits_hold_for_python_and_rust_targets_alike() -> None:
    """A payload for a Python handler on this loop is checked in place, one for the
    engine is converted: both meet the same limits, counted the same way."""
    import collections

    cfg = {"limits": {"max_payload_bytes": 64, "max_json_depth": 3}}
    async with BridgeManager(cfg) as b:
        b.register_route("py.echo", lambda m: m.payload)
        b._n._register_rust_echo("rust.echo")
        for dest in ("py.echo", "rust.echo"):
            # the engine's estimate: {"k": "x"*40} is 2 + (1 + 4) + (40 + 2) = 49 bytes
            assert await b.route(dest, {"k": "x" * 40}) == {"k": "x" * 40}
            with pytest.raises(db.InvalidMessageError, match="limits.max_payload_bytes"):
                await b.route(dest, {"k": "x" * 60})
            with pytest.raises(db.InvalidMessageError, match="max_json_depth"):
                await b.route(dest, [[[[1]]]])
            assert await b.route(dest, [[[1]]]) == [[[1]]]
            with pytest.raises(db.InvalidMessageError, match="64-bit"):
                await b.route(dest, [2**70])
            assert await b.route(dest, [2**63]) == [2**63]  # u64 is fine
            with pytest.raises(db.InvalidMessageError, match="NaN"):
                await b.route(dest, {"f": float("inf")})
            with pytest.raises(db.InvalidMessageError, match="dict key of type"):
                await b.route(dest, {"a": 1, 2: 3})
            with pytest.raises(db.InvalidMessageError, match='type "object"'):
                await b.route(dest, (1, object()))
            with pytest.raises(db.InvalidMessageError, match="UTF-8"):
                await b.route(dest, {"\udc80": 1})
            # subclasses of the JSON types are JSON-shaped too
            od = collections.OrderedDict(a=True, b=None)
            assert await b.route(dest, od) == od
            assert await b.route(dest, b"\x00" * 64) == b"\x00" * 64
            with pytest.raises(db.InvalidMessageError):
                await b.route(dest, b"\x00" * 65)
        snap = b.metrics()
        assert snap["routes"]["py.echo"]["errors"] == snap["routes"]["rust.echo"]["errors"]
