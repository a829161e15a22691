"""Where x0dash finds Nomad: the same environment variables as the `nomad` CLI, overridden by --nomad/--job.

Pure: reads a mapping (os.environ in production, a dict in tests) and validates it, so a typo in NOMAD_ADDR is
an operator-facing error at start instead of a connection error later.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit

import msgspec

DEFAULT_ADDR = "http://127.0.0.1:4646"
DEFAULT_JOB = "x0-mesh"


class NomadSettingsError(ValueError):
    """A Nomad setting is invalid; the message names the variable or option."""


class NomadSettings(msgspec.Struct, frozen=True, kw_only=True):
    address: str = DEFAULT_ADDR
    job: str = DEFAULT_JOB
    token: str | None = None
    namespace: str | None = None
    region: str | None = None
    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    # NOMAD_SKIP_VERIFY, as in the nomad CLI: only for https with self-signed certs and no CA file at hand.
    skip_verify: bool = False
    timeout_s: float = 5.0

    @property
    def verify(self) -> bool | str:
        """requests' `verify`: the CA bundle when given, else the system store; never off unless asked."""
        if self.ca_cert:
            return self.ca_cert
        return not self.skip_verify

    @property
    def cert(self) -> tuple[str, str] | tuple[()]:
        return (self.client_cert, self.client_key) if self.client_cert and self.client_key else ()

    @property
    def namespace_or_default(self) -> str:
        return self.namespace or "default"

    def describe(self) -> str:
        """Short label for the UI, without secrets."""
        ns = f" ns={self.namespace}" if self.namespace else ""
        region = f" region={self.region}" if self.region else ""
        return f"nomad {self.address} job={self.job}{ns}{region}"


def _truthy(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def load_settings(
    env: Mapping[str, str] | None = None,
    *,
    address: str | None = None,
    job: str | None = None,
    timeout_s: float | None = None,
) -> NomadSettings:
    """Settings from NOMAD_* (`env`, default os.environ) with --nomad (`address`) and --job (`job`) on top."""
    env = os.environ if env is None else env

    def get(name: str) -> str | None:
        value = env.get(name)
        return value.strip() or None if value is not None else None

    addr = (address or get("NOMAD_ADDR") or DEFAULT_ADDR).rstrip("/")
    parts = urlsplit(addr)
    origin = "--nomad" if address else "NOMAD_ADDR"
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise NomadSettingsError(f"{origin} must be an http(s) URL like {DEFAULT_ADDR} (got {addr!r})")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise NomadSettingsError(f"{origin} has an invalid port (got {addr!r})") from None
    if parts.path not in {"", "/"} or parts.query:
        raise NomadSettingsError(f"{origin} must not carry a path or query (got {addr!r}); the /v1 API is added")

    job_id = job or DEFAULT_JOB
    if not job_id or any(c.isspace() or c == "/" for c in job_id):
        raise NomadSettingsError(f"--job must be a Nomad job ID without spaces or '/' (got {job_id!r})")

    cert, key = get("NOMAD_CLIENT_CERT"), get("NOMAD_CLIENT_KEY")
    if bool(cert) != bool(key):
        missing = "NOMAD_CLIENT_KEY" if cert else "NOMAD_CLIENT_CERT"
        raise NomadSettingsError(f"{missing} must be set too: mutual TLS needs both the certificate and the key")
    ca = get("NOMAD_CACERT")
    for name, path in (("NOMAD_CACERT", ca), ("NOMAD_CLIENT_CERT", cert), ("NOMAD_CLIENT_KEY", key)):
        if path and not os.path.isfile(path):
            raise NomadSettingsError(f"{name} points to {path!r}, which is not a readable file")

    return NomadSettings(
        address=addr,
        job=job_id,
        token=get("NOMAD_TOKEN"),
        namespace=get("NOMAD_NAMESPACE"),
        region=get("NOMAD_REGION"),
        ca_cert=ca,
        client_cert=cert,
        client_key=key,
        skip_verify=_truthy(env.get("NOMAD_SKIP_VERIFY", "")),
        timeout_s=timeout_s if timeout_s is not None else 5.0,
    )
