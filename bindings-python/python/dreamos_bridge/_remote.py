"""A bridge that runs in a ``dreamos-bridge serve`` process (``BridgeManager.connect``).

Many agent processes connected to one server share its rate limits, queues,
connection pools and metrics. The object has the calls of a local
``BridgeManager`` (``route``, ``publish``, ``authenticate``,
``register_route``, ``handler``) and raises the same exceptions; the work is
done by the Rust client inside ``_native`` (HTTP calls with token renewal, one
WebSocket session serving this process's handlers, reconnects).
"""

from __future__ import annotations

import asyncio
import os
from types import TracebackType
from typing import Any, Callable, Dict, Generator, List, Mapping, Optional, Type, TypeVar, Union

from . import _native
from ._native import Message, Token

Payload = Any
Handler = Callable[[Message], Any]
H = TypeVar("H", bound=Callable[..., Any])
TokenLike = Union[Token, str]


def _completer() -> Any:
    from . import _completer as completer  # the package's per-loop completer

    return completer()


async def _wait(r: Any) -> Any:
    # A pending native call is the package's future: cancelling the awaiting
    # task cancels it, which drops the work on tokio.
    return await r


class Registration:
    """The server's answer to a ``register_route``: await it to know the
    pattern is served (``AuthorizationError`` if the principal may not serve
    it, ``ServiceUnavailableError`` if the server cannot be reached)."""

    __slots__ = ("_pending",)

    def __init__(self, pending: Any) -> None:
        self._pending = pending

    def __await__(self) -> Generator[Any, None, None]:
        return _wait(self._pending).__await__()


class RemoteBridge:
    """A connection to a bridge server; create it with ``await BridgeManager.connect(url, credentials)``."""

    __slots__ = ("_n", "_registrations", "__weakref__")
    _n: _native.Remote
    _registrations: List[Registration]

    def __init__(self) -> None:
        raise TypeError("use `await BridgeManager.connect(url, credentials)`")

    @classmethod
    async def _connect(
        cls,
        url: str,
        credentials: Optional[Mapping[str, str]],
        timeout: Optional[float],
        ca_file: Optional[Union[str, os.PathLike[str]]],
        max_connections: Optional[int],
    ) -> RemoteBridge:
        creds = dict(credentials) if credentials is not None else None
        native = await _wait(_native.Remote.connect(_completer(), url, creds, timeout, ca_file, max_connections))
        self = cls.__new__(cls)
        self._n = native
        self._registrations = []
        return self

    @property
    def url(self) -> str:
        """The server's URL."""
        return str(self._n.url)

    @property
    def token(self) -> Optional[Token]:
        """The session's bridge token (renewed before it expires); None without security."""
        return self._n.token

    @property
    def closed(self) -> bool:
        """Has :meth:`close` been called? (Always True in a process forked
        after the connection, where every call raises ``ShutdownError``.)"""
        return bool(self._n.is_closed())

    # -- routes ---------------------------------------------------------------

    def register_route(self, pattern: str, handler: Handler) -> Registration:
        """Serve ``pattern`` with ``handler`` for every client of the server.

        The handler (``async def`` or plain, taking a ``Message``) runs on the
        event loop running now. The subscription starts at once; await the
        result to know the server accepted it. After a reconnect the pattern
        is served again.
        """
        loop = asyncio.get_running_loop()
        reg = Registration(self._n.register_route(_completer(), pattern, handler, loop))
        return reg

    def handler(self, pattern: str) -> Callable[[H], H]:
        """Decorator form of :meth:`register_route`; :meth:`wait_routes` awaits the registrations."""

        def register(fn: H) -> H:
            self._registrations.append(self.register_route(pattern, fn))
            return fn

        return register

    async def wait_routes(self) -> None:
        """Wait until the server accepted every pattern registered with :meth:`handler`
        (raises the first refusal)."""
        pending, self._registrations = self._registrations, []
        for reg in pending:
            await reg

    def unregister_route(self, pattern: str) -> bool:
        """Stop serving ``pattern``; True if this client served it."""
        return bool(self._n.unregister_route(pattern))

    def routes(self) -> List[str]:
        """The patterns this client serves."""
        return list(self._n.routes())

    # -- the message flow -----------------------------------------------------

    async def route(
        self,
        destination: Union[str, Message],
        payload: Payload = None,
        *,
        token: Optional[TokenLike] = None,
        timeout: Optional[float] = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> Payload:
        """Send a request through the server and return the reply (same exceptions as a local bridge)."""
        return await _wait(self._n.route(_completer(), destination, payload, token, timeout, headers))

    async def publish(
        self,
        destination: Union[str, Message],
        payload: Payload = None,
        *,
        token: Optional[TokenLike] = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> str:
        """Fire and forget through the server: the message id once admitted."""
        return str(await _wait(self._n.publish(_completer(), destination, payload, token, headers)))

    async def authenticate(self, credentials: Mapping[str, str]) -> Token:
        """Exchange credentials for a token of the server (the session keeps its own)."""
        token: Token = await _wait(self._n.authenticate(_completer(), dict(credentials)))
        return token

    # -- observability --------------------------------------------------------

    async def metrics(self) -> Dict[str, Any]:
        """The server bridge's metrics snapshot (needs the admin role for ``admin.metrics``)."""
        m: Dict[str, Any] = await _wait(self._n.metrics(_completer()))
        return m

    async def health(self) -> Dict[str, Any]:
        """The server bridge's health: ``{"status": "up"|"degraded"|"down", "services": {...}}``."""
        h: Dict[str, Any] = await _wait(self._n.health(_completer()))
        return h

    # -- lifecycle ------------------------------------------------------------

    async def close(self) -> None:
        """Stop serving routes; further calls raise ``ShutdownError``."""
        self._n.close()

    async def __aenter__(self) -> RemoteBridge:
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        # A closed bridge serves nothing; in a forked child (closed too) routes() raises.
        routes = "-" if self.closed else len(self.routes())
        return f"<RemoteBridge url={self.url!r} routes={routes} closed={self.closed}>"


__all__ = ["RemoteBridge", "Registration"]
