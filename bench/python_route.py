"""Python benchmark: dreamos_bridge beside its peers, measured in the same run.

    python bench/python_route.py        (or: make bench)

1. In-process Python handler, sequential and 1,000 concurrent: the bridge vs a
   pure-asyncio equivalent (dict lookup, token-bucket limiter, handler call).
   Goal: at most 1.5x the pure-asyncio time.
2. A Rust-side echo target, 1,000 concurrent: the bridge vs the same route
   through plain pyo3_async_runtimes::tokio::future_into_py (the naive binding).
   Goal: >= 150,000 routes/s and 10x the naive path.
3. An HTTP service on loopback, 32 concurrent: the bridge vs aiohttp doing the
   same requests to the same server, a separate process: `dreamos-bridge
   serve` (Rust) when target/release/dreamos-bridge exists. Goal: 2x aiohttp.

Numbers are medians of several rounds; the machine is shared, so read the ratios.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from typing import Any, Awaitable, Callable, Dict, List

from dreamos_bridge import BridgeManager

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))


# -- the pure-asyncio peer ------------------------------------------------------


class _Msg:
    __slots__ = ("destination", "payload", "headers")

    def __init__(self, destination: str, payload: Any) -> None:
        self.destination = destination
        self.payload = payload
        self.headers: Dict[str, str] = {}


class PureAsyncioBridge:
    """What an agent would hand-write: route table, token bucket, handler call."""

    def __init__(self, rate: float = 1e9, burst: float = 1e9) -> None:
        self.routes: Dict[str, Callable[[Any], Any]] = {}
        self.rate, self.capacity, self.tokens, self.last = rate, burst, burst, time.monotonic()

    def register_route(self, pattern: str, fn: Callable[[Any], Any]) -> None:
        self.routes[pattern] = fn

    async def route(self, destination: str, payload: Any = None) -> Any:
        handler = self.routes.get(destination)
        if handler is None:
            raise LookupError(destination)
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1:
            raise RuntimeError("rate limited")
        self.tokens -= 1
        r = handler(_Msg(destination, payload))
        if inspect.isawaitable(r):
            r = await r
        return r


# -- helpers --------------------------------------------------------------------


async def timed(fn: Callable[[], Awaitable[None]]) -> float:
    times = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


async def timed_pair(ours: Callable[[], Awaitable[None]], peer: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    """Median times of `ours` and `peer`, rounds interleaved so that a change in
    the machine's load hits both alike."""
    a: List[float] = []
    b: List[float] = []
    for _ in range(ROUNDS):
        for fn, out in ((ours, a), (peer, b)):
            t0 = time.perf_counter()
            await fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(a), statistics.median(b)


def row(label: str, ours: float, peer: float, peer_label: str, n: int) -> None:
    print(
        f"  {label:<44} dreamos_bridge {ours / n * 1e6:8.2f} us/call {n / ours:>10,.0f}/s   "
        f"{peer_label} {peer / n * 1e6:8.2f} us/call {n / peer:>10,.0f}/s   ratio {ours / peer:5.2f}x"
    )


async def echo(msg: Any) -> Any:
    return msg.payload


async def bench_python_handler() -> None:
    print("1. in-process Python handler (async def echo), time ratio: bridge / pure asyncio (goal <= 1.5x)")
    bridge = BridgeManager()
    await bridge.initialize()
    bridge.register_route("agents.echo", echo)
    pure = PureAsyncioBridge()
    pure.register_route("agents.echo", echo)
    payload = {"text": "hello", "n": 1}

    n = 20_000

    async def seq_bridge() -> None:
        for _ in range(n):
            await bridge.route("agents.echo", payload)

    async def seq_pure() -> None:
        for _ in range(n):
            await pure.route("agents.echo", payload)

    for _ in range(2):  # warm up
        await seq_bridge()
        await seq_pure()
    row(f"sequential ({n:,} calls)", *await timed_pair(seq_bridge, seq_pure), "pure asyncio", n)

    c, batches = 1000, 10

    async def conc_bridge() -> None:
        for _ in range(batches):
            await asyncio.gather(*[bridge.route("agents.echo", payload) for _ in range(c)])

    async def conc_pure() -> None:
        for _ in range(batches):
            await asyncio.gather(*[pure.route("agents.echo", payload) for _ in range(c)])

    await conc_bridge()
    await conc_pure()
    row(f"1,000 concurrent (x{batches})", *await timed_pair(conc_bridge, conc_pure), "pure asyncio", c * batches)
    await bridge.shutdown()


async def bench_rust_echo() -> None:
    print("2. Rust-side echo target, 1,000 concurrent: bridge vs plain future_into_py (goal >= 150,000/s, 10x)")
    bridge = BridgeManager()
    await bridge.initialize()
    bridge._n._register_rust_echo("rust.echo")  # sync_handler_fn: answers without a future
    bridge._n._register_rust_echo("rust.aecho", asynchronous=True)  # handler_fn: an async block
    payload = {"text": "hello", "n": 1}
    c, batches = 1000, 10
    for dest, label in (("rust.echo", "sync Rust handler"), ("rust.aecho", "async Rust handler")):

        async def ours(dest: str = dest) -> None:
            for _ in range(batches):
                await asyncio.gather(*[bridge.route(dest, payload) for _ in range(c)])

        async def naive(dest: str = dest) -> None:
            for _ in range(batches):
                await asyncio.gather(*[bridge._n._route_naive(dest, payload) for _ in range(c)])

        await ours()
        await naive()
        t_ours, t_naive = await timed_pair(ours, naive)
        row(f"{label}, 1,000 concurrent (x{batches})", t_ours, t_naive, "future_into_py", c * batches)
        print(f"  -> {c * batches / t_ours:,.0f} routes/s, {t_naive / t_ours:.1f}x the naive binding")
    await bridge.shutdown()


# The HTTP target: `dreamos-bridge serve --echo bench.echo` (the release
# binary, built by `make bench-python`), answering POST /v1/route with the
# payload. Without the binary, an aiohttp server stands in (and, being
# Python, is then the bottleneck for both clients).
SERVER_BIN = os.environ.get(
    "DREAMOS_BRIDGE_BIN",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "dreamos-bridge"),
)

AIOHTTP_SERVER = textwrap.dedent(
    """
    import sys
    from aiohttp import web
    async def h(request):
        body = await request.json()
        return web.json_response({"payload": body.get("payload")})
    app = web.Application()
    app.router.add_post("/v1/route", h)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
    """
)


def start_server(port: int, workdir: str) -> tuple[subprocess.Popen[bytes], str]:
    if os.access(SERVER_BIN, os.X_OK):
        cfg = os.path.join(workdir, "bench.yaml")
        with open(cfg, "w") as f:
            f.write(
                f"bridge:\n  host: 127.0.0.1\n  port: {port}\n  queue_size: 100000\nmonitoring:\n  log_level: WARN\n"
            )
        cmd = [SERVER_BIN, "serve", "--config", cfg, "--echo", "bench.echo"]
        return subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        ), "dreamos-bridge serve (Rust)"
    cmd = [sys.executable, "-c", AIOHTTP_SERVER, str(port)]
    return subprocess.Popen(cmd), "aiohttp server (no release dreamos-bridge binary found)"


async def bench_http() -> None:
    import tempfile

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with tempfile.TemporaryDirectory() as workdir:
        proc, server = start_server(port, workdir)
        print(f"3. HTTP service on loopback ({server}), 32 concurrent: bridge vs aiohttp client (goal 2x aiohttp)")
        try:
            await run_http(port)
        finally:
            proc.terminate()
            proc.wait(10)


async def run_http(port: int) -> None:
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            await asyncio.sleep(0.05)
    cfg = {
        "services": {"svc": {"url": f"http://127.0.0.1:{port}", "timeout": "10s", "max_connections": 32}},
        "routes": [{"pattern": "services.svc.>", "service": "svc", "method": "POST", "path": "/v1/route"}],
    }
    bridge = BridgeManager(cfg)
    await bridge.initialize()
    import aiohttp

    c, batches = 32, 50
    payload = {"destination": "bench.echo", "payload": {"a": 1}}
    reply = await bridge.route("services.svc.echo", payload)
    assert reply == {"payload": {"a": 1}}, reply
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as session:
        url = f"http://127.0.0.1:{port}/v1/route"

        async def one() -> Any:
            async with session.post(url, json=payload) as r:
                r.raise_for_status()
                return await r.json()

        async def ours() -> None:
            for _ in range(batches):
                await asyncio.gather(*[bridge.route("services.svc.echo", payload) for _ in range(c)])

        async def peer() -> None:
            for _ in range(batches):
                await asyncio.gather(*[one() for _ in range(c)])

        assert await one() == reply
        await ours()
        await peer()
        t_ours, t_peer = await timed_pair(ours, peer)
        row(f"32 concurrent (x{batches})", t_ours, t_peer, "aiohttp", c * batches)
        print(f"  -> throughput {t_peer / t_ours:.2f}x aiohttp's")
    await bridge.shutdown()


async def main() -> None:
    print(f"dreamos_bridge Python benchmark (median of {ROUNDS} rounds, Python {sys.version.split()[0]})")
    await bench_python_handler()
    await bench_rust_echo()
    await bench_http()


if __name__ == "__main__":
    asyncio.run(main())
