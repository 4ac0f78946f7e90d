"""dreamos_bridge: the Dream.OS bridge engine for asyncio.

One Rust engine, embedded in the agent's process: it authenticates the caller,
authorizes the destination, rate-limits, routes by subject pattern, delivers to
an in-process handler or an HTTP service, records metrics and returns the reply
or one typed exception::

    from dreamos_bridge import BridgeManager

    async with BridgeManager() as bridge:
        @bridge.handler("agents.echo")
        async def echo(msg):
            return msg.payload

        print(await bridge.route("agents.echo", {"hi": 1}))

How the binding keeps calls cheap is explained in ``docs/python.md`` and in the
native module's documentation.
"""

from __future__ import annotations

import asyncio
import atexit
import collections.abc
import inspect
import os
import threading
import types
import weakref
from types import TracebackType
from typing import Any, Awaitable, Callable, Coroutine, Dict, Generator, List, Mapping, Optional, Type, TypeVar, Union

from . import _native
from ._errors import (
    AuthenticationError,
    AuthorizationError,
    BridgeError,
    BridgeTimeoutError,
    ConfigError,
    HandlerError,
    InternalError,
    InvalidMessageError,
    QueueFullError,
    RateLimitedError,
    RouteNotFoundError,
    ServiceUnavailableError,
    ShutdownError,
    UpstreamError,
    by_code,
)
from ._native import Message, Token

__all__ = [
    "BridgeManager",
    "RemoteBridge",
    "Registration",
    "Message",
    "Token",
    "BridgeError",
    "ConfigError",
    "InvalidMessageError",
    "AuthenticationError",
    "AuthorizationError",
    "RouteNotFoundError",
    "RateLimitedError",
    "QueueFullError",
    "BridgeTimeoutError",
    "ServiceUnavailableError",
    "UpstreamError",
    "HandlerError",
    "ShutdownError",
    "InternalError",
]

__version__ = "0.1.0"

Payload = Any
"""Anything JSON-shaped (dict with str keys, list, tuple, str, int, float, bool, None), or bytes."""

Handler = Callable[[Message], Union[Payload, Awaitable[Payload]]]
H = TypeVar("H", bound=Callable[..., Any])
TokenLike = Union[Token, str]

_timeout = getattr(asyncio, "timeout", None)  # Python >= 3.11
_isawaitable = inspect.isawaitable
_get_running_loop = asyncio.events._get_running_loop
_get_ident = threading.get_ident


def _dispatch(func: Handler, msg: Message, resolver: Any) -> None:
    """Run a handler on its own loop for a call that came from another thread."""
    try:
        r = func(msg)
        if _isawaitable(r):
            task = asyncio.ensure_future(r)
            resolver.set_task(task)
            task.add_done_callback(resolver.task_done)
            return
    except Exception as e:  # the handler's failure is the caller's HandlerError
        resolver.fail(e)
        return
    resolver.ok(r)


# ---------------------------------------------------------------------------
# One completer per event loop (see the native module docs): a socket pair
# registered with loop.add_reader through which tokio threads hand back
# results in batches.

_completers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
_completers_lock = threading.Lock()


class _NoLoop:
    _thread_id = None


class _Local(threading.local):
    # (loop, completer): the loop this thread used last. Only loops with
    # asyncio's `_thread_id` (BaseEventLoop) are cached; others take the slow path.
    pair: tuple[Any, Any] = (_NoLoop, None)


_tls = _Local()


def _completer() -> Any:
    """The running loop's completer (None outside a running loop)."""
    loop, c = _tls.pair
    # The loop this thread used last is the running one if it runs on this
    # thread (one loop at a time per thread): asyncio's get_running_loop()
    # makes a getpid() system call each time, this check does not.
    if loop._thread_id == _get_ident():
        return c
    loop = _get_running_loop()
    if loop is None:
        return None
    with _completers_lock:
        c = _completers.get(loop)
        if c is None:
            c = _native.Completer(loop)
            loop.add_reader(c.fileno(), c._drain)
            _completers[loop] = c
    if hasattr(loop, "_thread_id"):
        _tls.pair = (loop, c)
    return c


def _after_fork_in_child() -> None:
    global _tls, _completers, _completers_lock
    _native._after_fork_in_child()
    # The parent's socket pairs are shared with it: start afresh.
    _tls = _Local()
    _completers = weakref.WeakKeyDictionary()
    _completers_lock = threading.Lock()


_native._register_errors(by_code())
_native._register_dispatch(_dispatch)
atexit.register(_native._shutdown_runtime)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# ---------------------------------------------------------------------------
# What route() returns. When the answer is already there (the usual case), a
# native `Done`: a finished future as far as asyncio's duck typing goes
# (asyncio.isfuture), so gather, ensure_future and wait_for take it as it is
# (a coroutine would cost a Task each), and awaiting it returns at once.
# Otherwise an asyncio Future (`_Reply`), completed later. Both are also
# Coroutines, so create_task() and asyncio.run() accept them too (the task
# then just waits). Cancelling a pending one drops the engine's work.


class _Awaitable(Coroutine[Any, Any, Any]):
    """The coroutine protocol over a future: a task driving it waits for the future."""

    __slots__ = ()

    def send(self, value: Any) -> Any:
        fut: asyncio.Future[Any] = self  # type: ignore[assignment]
        if fut.done():
            raise StopIteration(fut.result())
        fut._asyncio_future_blocking = True
        return fut

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        fut: asyncio.Future[Any] = self  # type: ignore[assignment]
        fut.cancel()
        if val is None:
            raise typ
        raise val

    def close(self) -> None:
        pass


class _Reply(asyncio.Future, _Awaitable):  # type: ignore[type-arg]
    __slots__ = ("_abort",)

    def cancel(self, msg: Any = None) -> bool:
        if not asyncio.Future.cancel(self, msg):
            return False
        abort = getattr(self, "_abort", None)
        if abort is not None:
            abort()
        return True


class _ReplyTask(asyncio.Task, _Awaitable):  # type: ignore[type-arg]
    """A direct call whose handler suspended, running under the call's deadline."""

    __slots__ = ()


_native._register_future_types(_Reply, types.CoroutineType, inspect.isawaitable)
_Done = _native.Done
collections.abc.Coroutine.register(_Done)


async def _wait(r: Any) -> Any:
    if type(r) is _Reply:
        return await r
    return r


_CoroutineType = types.CoroutineType


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], yielded: Any) -> Generator[Any, Any, Any]:
    """Go on running a coroutine that was already stepped once, inside the current task
    (what ``await`` does, but starting after the first step)."""
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as e:  # cancellation and the timeout reach the handler
            try:
                yielded = coro.throw(e)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value


async def _run_suspended(d: Any) -> Any:
    """The rest of a direct call whose handler suspended: under the call's
    deadline, and until shutdown gives up on in-flight work. Then the handler
    is cancelled and the caller gets ``ShutdownError``, as from a handler the
    engine runs, and shutdown need not wait for it."""
    task = asyncio.current_task()
    stop = d.shutdown_signal(_completer())
    stopped = False

    def _on_stop(f: Any) -> None:
        nonlocal stopped
        if not f.cancelled() and task is not None and not task.done():
            stopped = True
            task.cancel()

    if stop is not None:
        stop.add_done_callback(_on_stop)
    try:
        r = await _deadline_bound(d)
    except asyncio.CancelledError:
        if stopped:
            raise _shut_down(d, task) from None
        d.cancel()
        raise
    finally:
        if stop is not None:
            stop.remove_done_callback(_on_stop)
            stop.cancel()
    if stopped:  # the handler swallowed the cancellation: shutdown still won
        raise _shut_down(d, task)
    return d.finish(r)


def _shut_down(d: Any, task: Any) -> BaseException:
    # Our own cancel() is answered here, so the task's cancel count is put back.
    uncancel = getattr(task, "uncancel", None)
    if uncancel is not None:
        uncancel()
    e: BaseException = d.shut_down()
    return e


async def _deadline_bound(d: Any) -> Any:
    """The handler under the call's deadline; its errors become the call's."""
    cm = None
    try:
        if d.started:
            coro = _resume(d.awaitable, d.step)
        else:
            coro = d.awaitable
        if _timeout is not None:
            cm = _timeout(d.remaining())
            async with cm:
                r = await coro
        else:  # Python < 3.11
            try:
                r = await asyncio.wait_for(coro, d.remaining())
            except asyncio.TimeoutError:
                raise d.timed_out() from None
    except BridgeTimeoutError as e:
        if cm is None:  # from the wait_for branch, already accounted
            raise
        raise d.fail(e) from e
    except TimeoutError as e:
        if cm is not None and cm.expired():
            raise d.timed_out() from None
        raise d.fail(e) from e
    except Exception as e:
        raise d.fail(e) from e
    return r


def _suspended(d: Any) -> Any:
    """The task running the rest of a direct call whose handler suspended."""
    return _ReplyTask(_run_suspended(d))


async def _route_later(
    bridge: BridgeManager,
    destination: Union[str, Message],
    payload: Payload,
    token: Optional[TokenLike],
    timeout: Optional[float],
    headers: Optional[Mapping[str, str]],
) -> Payload:
    """``route`` called outside a running loop: the call, made when this runs."""
    return await bridge.route(destination, payload, token=token, timeout=timeout, headers=headers)


_native._register_route_helpers(_completer, _suspended, _route_later)


class BridgeManager(_native.BridgeBase):
    """The bridge: lifecycle, routes, security and the message flow.

    ``BridgeManager()`` runs on embedded defaults (in-process handlers only);
    ``BridgeManager(config_dict)`` takes the YAML structure as a dict.

    ``route`` is inherited from the native base class (the hot path, with no
    Python frame); the rest reaches the engine through ``_n``.
    """

    __slots__ = ()

    def __init__(self, config: Optional[Mapping[str, Any]] = None) -> None:
        self._init_native(config)

    @classmethod
    def from_yaml(cls, text: str) -> BridgeManager:
        """Build from YAML text (``${VAR}`` expands from the environment)."""
        self = cls.__new__(cls)
        self._init_native(None, _native.Bridge.from_yaml(text))
        return self

    @classmethod
    def from_file(cls, path: Union[str, os.PathLike[str]]) -> BridgeManager:
        """Build from a YAML file."""
        self = cls.__new__(cls)
        self._init_native(None, _native.Bridge.from_file(os.fspath(path)))
        return self

    @classmethod
    async def connect(
        cls,
        url: str,
        credentials: Optional[Mapping[str, str]] = None,
        *,
        timeout: Optional[float] = None,
        ca_file: Optional[Union[str, os.PathLike[str]]] = None,
        max_connections: Optional[int] = None,
    ) -> RemoteBridge:
        """Connect to a running ``dreamos-bridge serve`` at ``url`` instead of embedding the engine.

        ``credentials`` (``{"api_key": ...}`` or ``{"token": <OIDC JWT>}``) are
        exchanged for a bridge token, renewed before it expires; None for a
        server without security. ``timeout``: seconds to wait for the server
        (default 10). ``ca_file``: a PEM file of CA certificates to trust
        beyond the built-in roots, for an ``https://`` server with a private or
        self-signed certificate (used by calls and by served routes alike).
        ``max_connections``: HTTP requests in flight to the server at once
        (default 32); further calls wait for a free connection within their
        own timeout. Keep the sum over the server's clients below its
        ``bridge.max_connections``. Agents connected to one server share its
        rate limits, queues, pools and metrics; see :class:`RemoteBridge`.
        """
        return await RemoteBridge._connect(url, credentials, timeout, ca_file, max_connections)

    # -- lifecycle ------------------------------------------------------------

    async def initialize(self) -> None:
        """Start the bridge. Handlers registered without a running loop will run on this loop."""
        await _wait(self._n.initialize(_completer()))

    async def shutdown(self) -> None:
        """Stop admitting, drain in-flight calls (grace period), fail the rest with ``ShutdownError``."""
        await _wait(self._n.shutdown(_completer()))

    @property
    def running(self) -> bool:
        """Is the bridge admitting messages?"""
        return bool(self._n.is_running())

    async def __aenter__(self) -> BridgeManager:
        await self.initialize()
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.shutdown()

    # -- routes ---------------------------------------------------------------

    def register_route(self, pattern: str, handler: Handler) -> None:
        """Route ``pattern`` to ``handler`` (an ``async def`` or a plain function taking a ``Message``).

        The handler runs on the event loop running now (or, if none, the one
        the bridge is initialized on). Callers on that loop call it directly.
        """
        try:
            loop: Optional[asyncio.AbstractEventLoop] = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        self._n.register_route(pattern, handler, loop)

    def handler(self, pattern: str) -> Callable[[H], H]:
        """Decorator form of :meth:`register_route`."""

        def register(fn: H) -> H:
            self.register_route(pattern, fn)
            return fn

        return register

    def unregister_route(self, pattern: str) -> bool:
        """Remove the route with exactly this pattern; True if there was one."""
        return bool(self._n.unregister_route(pattern))

    def routes(self) -> List[str]:
        """The registered patterns."""
        return list(self._n.routes())

    # -- the message flow -----------------------------------------------------

    async def publish(
        self,
        destination: Union[str, Message],
        payload: Payload = None,
        *,
        token: Optional[TokenLike] = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> str:
        """Fire and forget: return the message id once admitted; failures go to :meth:`dead_letters`."""
        r = self._n.publish(_completer(), destination, payload, token, headers)
        return str(await _wait(r))

    # -- security -------------------------------------------------------------

    async def authenticate(self, credentials: Mapping[str, str]) -> Token:
        """Exchange ``{"api_key": ...}`` (or ``{"token": <OIDC JWT>}``) for a bridge token."""
        return self._n.authenticate(dict(credentials))

    async def authorize(self, token: TokenLike, resource: str, action: str = "route") -> bool:
        """May the token's principal take ``action`` (route, publish, handle, admin) on ``resource``?"""
        return bool(self._n.authorize(token, resource, action))

    async def revoke(self, token: TokenLike) -> None:
        """Revoke a token until it expires."""
        self._n.revoke(token)

    # -- observability --------------------------------------------------------

    def metrics(self) -> Dict[str, Any]:
        """A snapshot of every metric, as a dict."""
        return self._n.metrics()

    def metrics_text(self) -> str:
        """Metrics in the Prometheus text format."""
        return str(self._n.metrics_text())

    async def health(self) -> Dict[str, Any]:
        """``{"status": "up"|"degraded"|"down", "services": {...}}``."""
        report: Dict[str, Any] = await _wait(self._n.health(_completer()))
        return report

    def dead_letters(self) -> List[Dict[str, Any]]:
        """Publishes that finally failed, oldest first."""
        return self._n.dead_letters()

    async def replay(self, id: str) -> None:
        """Deliver a dead letter again; on failure it goes back with the new error."""
        await _wait(self._n.replay(_completer(), id))

    def __repr__(self) -> str:
        return f"<BridgeManager running={self.running} routes={len(self.routes())}>"


from ._remote import Registration, RemoteBridge  # noqa: E402  (uses _completer above)
