"""What went wrong talking to Nomad, said so an operator can act on it.

python-nomad raises `BaseNomadException` (and subclasses per status) whose `nomad_resp` is either the
`requests.Response` (HTTP error, plain-text body) or the underlying requests error (refused, timeout);
`requests.exceptions.JSONDecodeError` escapes when a body is empty or not JSON. `classify` folds all of them into
one `NomadError` with a `kind` and, for 403, the ACL capability the request needs.
"""

from __future__ import annotations

from typing import Literal

import requests
from nomad.api import exceptions as nomad_exc

ErrorKind = Literal["unreachable", "timeout", "forbidden", "not_found", "bad_request", "server", "protocol"]

# ACL capability each call needs (Nomad ACL docs: namespace capabilities, node/agent policies). Keyed by the
# operation names NomadClient uses, so a 403 says exactly what to add to the token's policy.
CAPABILITIES: dict[str, str] = {
    "read job": 'namespace "<ns>" { capabilities = ["read-job"] }',
    "list allocations": 'namespace "<ns>" { capabilities = ["read-job"] }',
    "read allocation": 'namespace "<ns>" { capabilities = ["read-job"] }',
    "read services": 'namespace "<ns>" { capabilities = ["read-job"] }',
    "list nodes": 'node { policy = "read" }',
    "list node allocations": 'node { policy = "read" } and namespace "<ns>" { capabilities = ["read-job"] }',
    "stop allocation": 'namespace "<ns>" { capabilities = ["alloc-lifecycle"] }',
    "restart allocation": 'namespace "<ns>" { capabilities = ["alloc-lifecycle"] }',
    "drain node": 'node { policy = "write" }',
    "event stream": 'namespace "<ns>" { capabilities = ["read-job"] } and node { policy = "read" }',
    "read variable": 'namespace "<ns>" { variables { path "nomad/jobs/*" { capabilities = ["read"] } } }',
}


class NomadError(Exception):
    """One failed Nomad call. `str()` is the operator-facing message."""

    def __init__(
        self,
        kind: ErrorKind,
        operation: str,
        detail: str,
        *,
        status: int | None = None,
        capability: str | None = None,
    ) -> None:
        self.kind: ErrorKind = kind
        self.operation = operation
        self.detail = detail
        self.status = status
        self.capability = capability
        super().__init__(self.message)

    @property
    def message(self) -> str:
        text = f"Nomad {self.operation}: {self.detail}"
        if self.capability:
            text += f"; the token needs {self.capability}"
        return text


def _body_text(resp: requests.Response) -> str:
    # Nomad errors are plain text ("job not found", "Permission denied"); keep one short line.
    text = (resp.text or "").strip().replace("\n", " ")
    return text[:200] or resp.reason or f"HTTP {resp.status_code}"


def classify(exc: BaseException, operation: str, *, namespace: str = "default", address: str = "") -> NomadError:
    """Turn whatever python-nomad/requests raised during `operation` into a NomadError."""
    if isinstance(exc, NomadError):
        return exc
    where = f" at {address}" if address else ""
    cause: object = exc
    if isinstance(exc, nomad_exc.BaseNomadException | nomad_exc.TimeoutNomadException):
        cause = (
            exc.nomad_resp if isinstance(exc, nomad_exc.BaseNomadException) else (exc.args[0] if exc.args else exc)
        )
    if isinstance(cause, requests.Response):
        status = cause.status_code
        body = _body_text(cause)
        if status == 403:
            cap = CAPABILITIES.get(operation, "a policy allowing this call").replace("<ns>", namespace)
            return NomadError("forbidden", operation, f"403 {body}", status=status, capability=cap)
        if status == 404:
            return NomadError("not_found", operation, f"404 {body}", status=status)
        if status == 400:
            return NomadError("bad_request", operation, f"400 {body}", status=status)
        return NomadError("server", operation, f"HTTP {status} {body}", status=status)
    # SSLError and ConnectTimeout are ConnectionErrors too: most specific first.
    if isinstance(cause, requests.exceptions.SSLError):
        return NomadError("unreachable", operation, f"TLS failed{where}: {cause}")
    if isinstance(cause, requests.Timeout | nomad_exc.TimeoutNomadException):
        return NomadError("timeout", operation, f"no answer{where} in time ({type(cause).__name__})")
    if isinstance(cause, requests.ConnectionError):
        reason = str(cause)
        if "timed out" in reason.lower():
            return NomadError("timeout", operation, f"no answer{where} in time (connect timed out)")
        return NomadError(
            "unreachable", operation, f"cannot connect{where} (is Nomad running? {type(cause).__name__})"
        )
    if isinstance(cause, ValueError):  # requests' JSONDecodeError and our own shape checks
        return NomadError("protocol", operation, f"unexpected response body: {cause}")
    if isinstance(cause, requests.RequestException):
        return NomadError("unreachable", operation, f"{type(cause).__name__}: {cause}")
    return NomadError("protocol", operation, f"{type(exc).__name__}: {exc}")
