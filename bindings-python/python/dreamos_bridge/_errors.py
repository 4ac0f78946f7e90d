"""The exception hierarchy: one class per engine error code (DESIGN.md section 5)."""

from __future__ import annotations

from typing import Dict, Optional, Type

__all__ = [
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


class BridgeError(Exception):
    """Every error the bridge raises. ``code`` is the stable engine code, e.g. ``"RATE_LIMITED"``."""

    code: str = "INTERNAL"
    #: Seconds to wait before retrying (``RateLimitedError``, some upstream errors).
    retry_after: Optional[float] = None
    #: HTTP status of an upstream answer (``UpstreamError``).
    status: Optional[int] = None
    #: Body of an upstream answer, size-capped (``UpstreamError``).
    body: Optional[str] = None

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(BridgeError):
    """The configuration is invalid; the message names the key path."""

    code = "CONFIG"


class InvalidMessageError(BridgeError):
    """Bad destination, payload (not JSON-shaped, too big, too deep) or headers."""

    code = "INVALID_MESSAGE"


class AuthenticationError(BridgeError):
    """Bad credentials; token missing, malformed, expired or revoked."""

    code = "UNAUTHENTICATED"


class AuthorizationError(BridgeError):
    """Authenticated, but not allowed this action on this resource."""

    code = "FORBIDDEN"


class RouteNotFoundError(BridgeError):
    """No route matches the destination."""

    code = "ROUTE_NOT_FOUND"


class RateLimitedError(BridgeError):
    """A rate limit was hit; ``retry_after`` says when to retry (seconds)."""

    code = "RATE_LIMITED"


class QueueFullError(BridgeError):
    """Backpressure: no room in the route's queue within the deadline."""

    code = "QUEUE_FULL"


class BridgeTimeoutError(BridgeError, TimeoutError):
    """The deadline passed. Also a built-in ``TimeoutError``."""

    code = "TIMEOUT"


class ServiceUnavailableError(BridgeError):
    """Connect failed after retries, circuit open, or the service is down."""

    code = "SERVICE_UNAVAILABLE"


class UpstreamError(BridgeError):
    """The service answered with an error status (``status``, ``body``)."""

    code = "UPSTREAM_ERROR"


class HandlerError(BridgeError):
    """An in-process handler raised; the message carries the original exception's."""

    code = "HANDLER_ERROR"


class ShutdownError(BridgeError):
    """The bridge is not running (not initialized, shut down, or inherited through fork())."""

    code = "SHUTDOWN"


class InternalError(BridgeError):
    """A bug in the bridge (never a crash): please report it."""

    code = "INTERNAL"


def by_code() -> Dict[str, Type[BridgeError]]:
    """``{code: class}`` for every code."""
    classes = [
        ConfigError,
        InvalidMessageError,
        AuthenticationError,
        AuthorizationError,
        RouteNotFoundError,
        RateLimitedError,
        QueueFullError,
        BridgeTimeoutError,
        ServiceUnavailableError,
        UpstreamError,
        HandlerError,
        ShutdownError,
        InternalError,
    ]
    return {c.code: c for c in classes}
