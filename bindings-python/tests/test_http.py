"""HTTP services through a real local server (127.0.0.1, port 0)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator, Tuple

import pytest

import dreamos_bridge as db
from dreamos_bridge import BridgeManager


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        body = self.rfile.read(int(self.headers.get("content-length", "0") or 0))
        if self.path.endswith("/fail"):
            self.send_response(418)
            self.end_headers()
            self.wfile.write(b"teapot")
            return
        reply = json.dumps({"path": self.path, "got": json.loads(body or b"null")}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Tuple[str, int]]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv.server_address[0], srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


async def test_http_service_round_trip(server: Tuple[str, int]) -> None:
    host, port = server
    cfg = {
        "services": {"weather": {"url": f"http://{host}:{port}", "timeout": "5s", "retry_attempts": 0}},
        "routes": [{"pattern": "services.weather.>", "service": "weather", "method": "POST"}],
    }
    async with BridgeManager(cfg) as b:
        try:
            reply = await b.route("services.weather.current", {"city": "Paris"})
        except db.ServiceUnavailableError as e:
            if "not implemented" in str(e):
                pytest.skip("connection module not merged yet")
            raise
        assert reply == {"path": "/current", "got": {"city": "Paris"}}
        with pytest.raises(db.UpstreamError) as err:
            await b.route("services.weather.fail", {})
        assert err.value.status == 418 and err.value.code == "UPSTREAM_ERROR"


async def test_http_service_down_is_unavailable() -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    cfg = {
        "services": {"gone": {"url": f"http://127.0.0.1:{port}", "timeout": "2s", "retry_attempts": 0}},
        "routes": [{"pattern": "services.gone.>", "service": "gone"}],
    }
    async with BridgeManager(cfg) as b:
        with pytest.raises(db.ServiceUnavailableError):
            await b.route("services.gone.x", {})
