"""BridgeManager.connect: agents in several processes sharing one real `dreamos-bridge serve`.

Each test starts the server binary (built by `make test-python`, or here with
cargo if it is missing) on 127.0.0.1 port 0 with a temporary YAML config, and
reads the port from its `listening on` line.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List

import pytest

import dreamos_bridge as db
from dreamos_bridge import BridgeManager, Message

from conftest import wait_child

ROOT = Path(__file__).resolve().parents[2]
AGENT = "dk_remote_agent_0123456789"
AGENT2 = "dk_remote_agent2_0123456789"
ADMIN = "dk_remote_admin_0123456789"
SERVICE = "dk_remote_service_0123456789"


def _sha(k: str) -> str:
    return hashlib.sha256(k.encode()).hexdigest()


def server_binary() -> Path:
    """The debug `dreamos-bridge` binary of this workspace (built if missing)."""
    if os.environ.get("DREAMOS_BRIDGE_BIN"):
        return Path(os.environ["DREAMOS_BRIDGE_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    binary = target / "debug" / "dreamos-bridge"
    if not binary.exists():
        subprocess.run(["cargo", "build", "-q", "-p", "dreamos-bridge-server"], cwd=ROOT, check=True)
    return binary


CONFIG = textwrap.dedent(
    f"""\
    bridge:
      host: 127.0.0.1
      port: 0
      rate_limit_mode: reject
    monitoring:
      log_level: WARN
    security:
      auth_type: token
      token_expiry: 600
      signing_keys:
        - id: k1
          secret: remote-test-signing-secret-0123456789abcdef
      api_keys:
        - {{principal: agent, sha256: {_sha(AGENT)}, roles: [agent]}}
        - {{principal: agent2, sha256: {_sha(AGENT2)}, roles: [agent]}}
        - {{principal: ops, sha256: {_sha(ADMIN)}, roles: [admin]}}
        - {{principal: svc, sha256: {_sha(SERVICE)}, roles: [service]}}
      roles:
        agent: {{route: ["agents.>", "ext.>", "limited.>"], publish: ["agents.>"], deny: ["agents.secret"]}}
        service: {{handle: ["ext.>"]}}
        admin: {{admin: [">"]}}
    routes:
      - pattern: limited.echo
        rate_limit: 1/min
        burst: 1
    """
)


TLS_DIR = ROOT / "testdata" / "tls"


class Server:
    def __init__(self, tmp: Path, tls: bool = False) -> None:
        cfg = tmp / "bridge.yaml"
        config = CONFIG
        if tls:
            cert, key = TLS_DIR / "localhost.cert.pem", TLS_DIR / "localhost.key.pem"
            config = config.replace("bridge:\n", f"bridge:\n  tls: {{cert: {cert}, key: {key}}}\n", 1)
        cfg.write_text(config)
        self.log = tmp / "server.log"
        self.proc = subprocess.Popen(
            [str(server_binary()), "serve", "--config", str(cfg), "--echo", "agents.echo", "--echo", "limited.echo"],
            stdout=subprocess.PIPE,
            stderr=self.log.open("wb"),
            text=True,
        )
        self.url = self._listening_url()

    def _listening_url(self) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if "listening on " in line:
                return line.split("listening on ", 1)[1].strip()
        self.stop()
        raise AssertionError(f"the server did not start: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path)
    try:
        yield s
    finally:
        s.stop()


async def test_route_publish_authenticate(server: Server) -> None:
    async with await BridgeManager.connect(server.url, {"api_key": AGENT}) as bridge:
        assert isinstance(bridge, db.RemoteBridge)
        assert bridge.token is not None and bridge.token.principal == "agent"
        assert await bridge.route("agents.echo", {"x": [1, 2.5, None]}) == {"x": [1, 2.5, None]}
        assert await bridge.route("agents.echo", b"\x00\x01\xff") == b"\x00\x01\xff"
        assert await bridge.route(Message("agents.echo", "m", headers={"h": "v"})) == "m"
        msg_id = await bridge.publish("agents.echo", 1)
        assert len(msg_id) == 36
        admin = await bridge.authenticate({"api_key": ADMIN})
        assert (admin.principal, admin.roles) == ("ops", ["admin"])
        assert (await bridge.health())["status"] == "up"
    assert bridge.closed
    with pytest.raises(db.ShutdownError):
        await bridge.route("agents.echo", 1)


async def test_errors_are_the_local_exception_classes(server: Server) -> None:
    bridge = await BridgeManager.connect(server.url, {"api_key": AGENT})
    with pytest.raises(db.RouteNotFoundError):
        await bridge.route("agents.nobody", 1)
    with pytest.raises(db.AuthorizationError):
        await bridge.route("agents.secret", 1)
    with pytest.raises(db.InvalidMessageError):
        await bridge.route("bad..subject", 1)
    with pytest.raises(db.AuthenticationError):
        await bridge.route("agents.echo", 1, token="not-a-token")
    # lone surrogates: the bridge's typed errors, as for a local bridge
    with pytest.raises(db.InvalidMessageError):
        await bridge.route("agents.\ud800", 1)
    with pytest.raises(db.InvalidMessageError):
        await bridge.route("agents.echo", 1, headers={"x": "\ud800"})
    with pytest.raises(db.InvalidMessageError):
        await bridge.publish("agents.echo", 1, headers={"\ud800": "v"})
    with pytest.raises(db.AuthenticationError):
        await bridge.route("agents.echo", 1, token="\ud800")
    with pytest.raises(db.AuthorizationError):
        await bridge.metrics()
    await bridge.route("limited.echo", 1)
    with pytest.raises(db.RateLimitedError) as rl:
        await bridge.route("limited.echo", 2)
    assert rl.value.retry_after is not None and 1 < rl.value.retry_after <= 60
    with pytest.raises(db.AuthenticationError):
        await BridgeManager.connect(server.url, {"api_key": "dk_wrong"})
    await bridge.close()
    url = server.url
    server.stop()
    with pytest.raises(db.ServiceUnavailableError) as su:
        await BridgeManager.connect(url, {"api_key": AGENT}, timeout=2)
    assert url.split("//")[1] in str(su.value)


async def test_connect_timeout_bounds_a_server_that_never_answers() -> None:
    held: List[asyncio.StreamWriter] = []

    async def accept_and_stay_silent(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)

    silent = await asyncio.start_server(accept_and_stay_silent, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        with pytest.raises(db.BridgeTimeoutError) as e:
            await BridgeManager.connect(f"http://127.0.0.1:{port}", {"api_key": AGENT}, timeout=0.3)
        assert "did not answer within 0.3s" in str(e.value)
    finally:
        for w in held:
            w.close()
        silent.close()
        await silent.wait_closed()


async def test_lone_surrogates_in_patterns_urls_and_credentials_are_typed_errors(server: Server) -> None:
    with pytest.raises(db.ConfigError) as ce:
        await BridgeManager.connect(server.url + "/\ud800", {"api_key": AGENT})
    assert "url" in str(ce.value) and "UTF-8" in str(ce.value)
    with pytest.raises(db.ConfigError) as ce:
        await BridgeManager.connect(server.url, {"api_key": AGENT}, ca_file="ca\ud800.pem")
    assert "ca_file" in str(ce.value)
    with pytest.raises(db.AuthenticationError) as ae:
        await BridgeManager.connect(server.url, {"api_key": "dk_secret_\ud800"})
    assert "credentials" in str(ae.value) and "payload" not in str(ae.value)
    assert "dk_secret" not in str(ae.value)
    service = await BridgeManager.connect(server.url, {"api_key": SERVICE})
    with pytest.raises(db.InvalidMessageError) as ie:
        service.register_route("ext.\ud800", lambda m: m.payload)
    assert "pattern" in str(ie.value) and "UTF-8" in str(ie.value)
    with pytest.raises(db.InvalidMessageError) as ie:
        service.unregister_route("ext.\udfff")
    assert "pattern" in str(ie.value)
    with pytest.raises(db.AuthenticationError) as ae:
        await service.authenticate({"api_key": "dk_secret_\ud800"})
    assert "credentials" in str(ae.value) and "payload" not in str(ae.value)
    assert "dk_secret" not in str(ae.value)
    # the connection keeps working
    await service.register_route("ext.ok", lambda m: m.payload)
    agent = await BridgeManager.connect(server.url, {"api_key": AGENT})
    assert await agent.route("ext.ok", 7) == 7
    assert service.unregister_route("ext.ok")
    await agent.close()
    await service.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_remote_bridge_refuses_work_in_a_forked_child(server: Server) -> None:
    """In a forked child every call of the parent's RemoteBridge raises
    ShutdownError at once (its connections and tasks belong to the parent);
    a new connection works, and the parent's keeps working."""
    loop = asyncio.new_event_loop()

    async def setup() -> Any:
        remote = await BridgeManager.connect(server.url, {"api_key": AGENT})
        assert await remote.route("agents.echo", 1) == 1
        return remote

    parent = loop.run_until_complete(setup())

    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            signal.alarm(30)

            async def child() -> int:
                calls: List[Callable[[], Any]] = [
                    # Without the check this waited for the parent's connection until the timeout.
                    lambda: parent.route("agents.echo", 1, timeout=10),
                    lambda: parent.publish("agents.echo", 1),
                    lambda: parent.authenticate({"api_key": AGENT}),
                    lambda: parent.register_route("agents.forked", lambda m: m.payload),
                    lambda: parent.unregister_route("agents.forked"),
                    lambda: parent.routes(),
                    lambda: parent.token,
                    lambda: parent.metrics(),
                    lambda: parent.health(),
                    lambda: parent.close(),
                ]
                for i, call in enumerate(calls):
                    try:
                        r = call()
                        if inspect.isawaitable(r):
                            await r
                        return 10 + i
                    except db.ShutdownError as e:
                        if "fork" not in str(e):
                            return 30 + i
                if not parent.closed or "RemoteBridge" not in repr(parent):
                    return 50
                fresh = await BridgeManager.connect(server.url, {"api_key": AGENT})
                assert await fresh.route("agents.echo", 2) == 2
                await fresh.close()
                return 0

            code = asyncio.run(child())
        except BaseException:
            code = 60
        finally:
            os._exit(code)
    assert wait_child(pid) == 0
    # the parent is unaffected
    assert loop.run_until_complete(parent.route("agents.echo", 3)) == 3
    loop.run_until_complete(parent.close())
    loop.close()


async def test_a_python_handler_served_remotely_answers_another_agent(server: Server) -> None:
    service = await BridgeManager.connect(server.url, {"api_key": SERVICE})
    seen: list[Any] = []

    async def tool(msg: Message) -> Any:
        seen.append((msg.destination, msg.source))
        if msg.destination == "ext.py.fail":
            raise ValueError("tool broke")
        if msg.destination == "ext.py.bytes":
            return msg.payload
        if msg.destination == "ext.py.slow":
            await asyncio.sleep(5)
        await asyncio.sleep(0)
        return {"echo": msg.payload, "headers": msg.headers}

    await service.register_route("ext.py.>", tool)

    @service.handler("ext.plain")
    def plain(msg: Message) -> Any:
        return msg.payload * 2

    await service.wait_routes()
    assert sorted(service.routes()) == ["ext.plain", "ext.py.>"]
    # A pattern outside the service's `handle` grant is refused by the server.
    with pytest.raises(db.AuthorizationError):
        await service.register_route("agents.mine", tool)

    agent = await BridgeManager.connect(server.url, {"api_key": AGENT})
    assert await agent.route("ext.py.sum", [1, 2], headers={"k": "v"}) == {"echo": [1, 2], "headers": {"k": "v"}}
    assert await agent.route("ext.py.bytes", b"\x07\x00") == b"\x07\x00"
    assert await agent.route("ext.plain", 21) == 42
    with pytest.raises(db.HandlerError) as he:
        await agent.route("ext.py.fail", 0)
    assert "tool broke" in str(he.value)
    with pytest.raises(db.BridgeTimeoutError):
        await agent.route("ext.py.slow", 0, timeout=0.3)
    replies = await asyncio.gather(*(agent.route("ext.py.n", i) for i in range(10)))
    assert [r["echo"] for r in replies] == list(range(10))
    assert ("ext.py.sum", "agent") in seen
    assert service.unregister_route("ext.plain")
    # Until the server has processed the unsubscribe it may still send the
    # pattern here; this client declines, and the caller gets
    # RouteNotFoundError either way.
    with pytest.raises(db.RouteNotFoundError):
        await agent.route("ext.plain", 1)
    await agent.close()
    await service.close()


async def test_handler_cancellation_racing_its_completion_keeps_the_bridge_working(server: Server) -> None:
    """Remote handlers that finish right around the caller's deadline: the
    engine cancels the Python task from a tokio thread while the loop thread
    reports it done. Those two paths once deadlocked (a lock held across a
    GIL release); this drives many of them at once."""
    service = await BridgeManager.connect(server.url, {"api_key": SERVICE})

    async def around_the_deadline(msg: Message) -> Any:
        await asyncio.sleep(msg.payload / 1000)
        return msg.payload

    await service.register_route("ext.race.>", around_the_deadline)
    await service.wait_routes()
    agent = await BridgeManager.connect(server.url, {"api_key": AGENT})
    # 24 at once: within the client's default connection limit (32), so the
    # calls reach the handler instead of queueing for a connection.
    delays = [40 + i for i in range(24)]
    for _ in range(12):
        outcomes = await asyncio.gather(
            *(agent.route("ext.race.x", ms, timeout=0.05) for ms in delays), return_exceptions=True
        )
        for ms, r in zip(delays, outcomes):
            assert r == ms or isinstance(r, db.BridgeTimeoutError), r
    assert await agent.route("ext.race.x", 0) == 0
    await agent.close()
    await service.close()


async def test_max_connections_bounds_the_calls_the_server_handles_at_once(server: Server) -> None:
    """connect(max_connections=2): ten routes at once all complete, and the
    handler (served by another client) never runs more than two of them."""
    service = await BridgeManager.connect(server.url, {"api_key": SERVICE})
    in_flight = peak = 0
    pair, crowd = asyncio.Event(), asyncio.Event()

    async def slow(msg: Message) -> Any:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        if in_flight >= 2:
            pair.set()
        if in_flight >= 3:
            crowd.set()
        try:
            # A call waits for a second one (two at once must be allowed), then
            # gives a third the chance to show up (it must not). The waits only
            # hold calls open; nothing below depends on how long they took.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(pair.wait(), 10)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(crowd.wait(), 0.2)
            return msg.payload
        finally:
            in_flight -= 1

    await service.register_route("ext.slow.>", slow)
    await service.wait_routes()
    agent = await BridgeManager.connect(server.url, {"api_key": AGENT}, max_connections=2)
    replies = await asyncio.gather(*(agent.route("ext.slow.n", i, timeout=60) for i in range(10)))
    assert replies == list(range(10))
    assert peak == 2, f"{peak} calls reached the handler at once with max_connections=2"
    await agent.close()
    await service.close()


@pytest.mark.parametrize("bad", [0, -1, 2.5, "2", True, 2**70])
async def test_max_connections_must_be_a_positive_integer(server: Server, bad: Any) -> None:
    with pytest.raises(db.InvalidMessageError, match="max_connections must be a positive integer"):
        await BridgeManager.connect(server.url, {"api_key": AGENT}, max_connections=bad)


@pytest.mark.parametrize("bad", [0, True, "5"])
async def test_connect_timeout_must_be_a_positive_number_of_seconds(server: Server, bad: Any) -> None:
    with pytest.raises(db.InvalidMessageError, match="timeout must be a positive number of seconds"):
        await BridgeManager.connect(server.url, {"api_key": AGENT}, timeout=bad)


@pytest.mark.skipif(sys.maxsize < 2**62, reason="2**62 is not a usize here (InvalidMessageError, tested above)")
async def test_max_connections_beyond_what_the_client_can_count_is_a_config_error(server: Server) -> None:
    with pytest.raises(db.ConfigError, match="max_connections"):
        await BridgeManager.connect(server.url, {"api_key": AGENT}, max_connections=2**62)


AGENT_SCRIPT = """
import asyncio, sys
import dreamos_bridge as db

async def main(url, key):
    bridge = await db.BridgeManager.connect(url, {"api_key": key})
    try:
        print("ok", await bridge.route("limited.echo", "from another process"))
    except db.RateLimitedError as e:
        print("RATE_LIMITED", e.retry_after)
    await bridge.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_two_agent_processes_share_one_rate_limit(server: Server) -> None:
    """The point of connect(): the limit is the server's, not each process's."""
    first = await BridgeManager.connect(server.url, {"api_key": AGENT})
    assert await first.route("limited.echo", "first") == "first"
    # A second agent process, with its own principal, meets the same limit.
    out = subprocess.run(
        [sys.executable, "-c", AGENT_SCRIPT, server.url, AGENT2], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    code, retry_after = out.stdout.split()
    assert code == "RATE_LIMITED" and float(retry_after) > 1
    admin = await BridgeManager.connect(server.url, {"api_key": ADMIN})
    m = await admin.metrics()
    assert (m["routes"]["limited.echo"]["ok"], m["routes"]["limited.echo"]["rate_limited"]) == (1, 1)
    assert {"agent", "agent2"} <= set(m["principals"])
    await first.close()
    await admin.close()


async def test_over_tls_a_served_handler_answers_through_wss(tmp_path: Path) -> None:
    server = Server(tmp_path, tls=True)
    try:
        assert server.url.startswith("https://")
        ca = TLS_DIR / "localhost.cert.pem"
        # Without the CA, the self-signed server cannot be trusted.
        with pytest.raises(db.ServiceUnavailableError):
            await BridgeManager.connect(server.url, {"api_key": SERVICE}, timeout=5)
        # A CA file that is not there is a configuration error, before any connection.
        with pytest.raises(db.ConfigError) as ce:
            await BridgeManager.connect(server.url, {"api_key": SERVICE}, ca_file=tmp_path / "missing.pem")
        assert "ca_file" in str(ce.value)
        service = await BridgeManager.connect(server.url, {"api_key": SERVICE}, ca_file=ca)

        @service.handler("ext.tls")
        async def tool(msg: Message) -> Any:
            return {"over": "wss", "got": msg.payload}

        await service.wait_routes()
        agent = await BridgeManager.connect(server.url, {"api_key": AGENT}, ca_file=str(ca))
        assert await agent.route("ext.tls", 5) == {"over": "wss", "got": 5}
        await agent.close()
        await service.close()
    finally:
        server.stop()
