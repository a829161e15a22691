"""Typed errors for the admin client. Every failure mode maps to exactly one of these."""

from __future__ import annotations


class AdminError(Exception):
    """Base: anything that went wrong talking to the daemon's admin socket."""

    def __init__(self, endpoint: str, message: str) -> None:
        super().__init__(f"{endpoint}: {message}")
        self.endpoint = endpoint
        self.message = message


class AdminUnavailable(AdminError):
    """Could not connect: socket missing, connection refused, permission denied."""


class AdminTimeout(AdminError):
    """Connected (or connecting) but no complete answer within the timeout."""


class AdminProtocolError(AdminError):
    """The daemon answered something that is not a valid admin reply (garbage, early close)."""


class AdminCommandError(AdminError):
    """The daemon answered status=error (e.g. 'peer already configured')."""

    def __init__(self, endpoint: str, request: str, error: str) -> None:
        super().__init__(endpoint, f"{request}: {error}")
        self.request = request
        self.error = error
