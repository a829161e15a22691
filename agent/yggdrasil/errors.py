"""Typed errors for the admin client. Every failure mode maps to exactly one of these."""

from __future__ import annotations

from typing import Literal

CommandErrorKind = Literal[
    "already_configured", "not_configured", "unknown_scheme", "unknown_command", "timed_out", "other"
]

# Daemon error strings (lower-cased: 0.4.7 capitalises some, 0.5.x does not), shared/reference/yggdrasil.md §1.3,
# §1.5 addPeer/removePeer. Order matters: "not configured" must be tested before "configured".
_KIND_PATTERNS: tuple[tuple[str, CommandErrorKind], ...] = (
    ("peer not configured", "not_configured"),  # 0.4.7
    ("peer is not configured", "not_configured"),  # 0.5.x
    ("peer already configured", "already_configured"),  # 0.4.7
    ("peer is already configured", "already_configured"),  # 0.5.x (also kicks a backing-off redial)
    ("unknown call scheme", "unknown_scheme"),  # 0.4.7
    ("link schema unknown", "unknown_scheme"),  # 0.5.x
    ("unknown action", "unknown_command"),
    ("timed out waiting for response", "timed_out"),
)


class AdminError(Exception):
    """Base: anything that went wrong talking to the daemon's admin socket."""

    def __init__(self, endpoint: str, message: str) -> None:
        super().__init__(f"{endpoint}: {message}")
        self.endpoint = endpoint
        self.message = message


class AdminUnavailable(AdminError):
    """Could not connect: socket missing, connection refused, permission denied, connection reset."""


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

    @property
    def kind(self) -> CommandErrorKind:
        """The error class, the same for 0.4 and 0.5 wordings (matched case-insensitively)."""
        lowered = self.error.lower()
        for pattern, kind in _KIND_PATTERNS:
            if pattern in lowered:
                return kind
        return "other"
