"""NOMAD_* environment and --nomad/--job handling (pure)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dashboard.nomad.client import NomadClient
from dashboard.nomad.settings import NomadSettingsError, load_settings
from dashboard.providers.base import ProviderError
from dashboard.providers.nomad import NomadProvider


def test_defaults_and_environment() -> None:
    s = load_settings({})
    assert (s.address, s.job, s.token, s.namespace, s.region, s.verify, s.cert) == (
        "http://127.0.0.1:4646",
        "x0-mesh",
        None,
        None,
        None,
        True,
        (),
    )
    s = load_settings(
        {
            "NOMAD_ADDR": "https://nomad.example:4646/",
            "NOMAD_TOKEN": "tok-secret",
            "NOMAD_NAMESPACE": "mesh",
            "NOMAD_REGION": "eu",
        }
    )
    assert (s.address, s.token, s.namespace, s.region) == (
        "https://nomad.example:4646",
        "tok-secret",
        "mesh",
        "eu",
    )
    assert "tok-secret" not in s.describe()


def test_flags_override_the_environment() -> None:
    s = load_settings({"NOMAD_ADDR": "http://a:4646"}, address="http://b:4646", job="other")
    assert (s.address, s.job) == ("http://b:4646", "other")


def test_tls_is_verified_with_the_given_ca_and_client_cert(tmp_path: Path) -> None:
    ca, cert, key = (tmp_path / n for n in ("ca.pem", "cli.pem", "cli-key.pem"))
    for f in (ca, cert, key):
        f.write_text("-----BEGIN CERTIFICATE-----\n")
    s = load_settings(
        {
            "NOMAD_ADDR": "https://n:4646",
            "NOMAD_CACERT": str(ca),
            "NOMAD_CLIENT_CERT": str(cert),
            "NOMAD_CLIENT_KEY": str(key),
        }
    )
    assert s.verify == str(ca)
    assert s.cert == (str(cert), str(key))
    client = NomadClient(s)
    assert client._job.verify == str(ca) and client._job.cert == (str(cert), str(key))
    assert client._job.user_agent is None  # python-nomad's user_agent-without-token TypeError
    client.close()
    assert load_settings({"NOMAD_SKIP_VERIFY": "true"}).verify is False


@pytest.mark.parametrize(
    ("env", "flags", "message"),
    [
        ({"NOMAD_ADDR": "nomad:4646"}, {}, "NOMAD_ADDR must be an http(s) URL"),
        ({}, {"address": "ftp://x"}, "--nomad must be an http(s) URL"),
        ({"NOMAD_ADDR": "http://x:99999"}, {}, "invalid port"),
        ({"NOMAD_ADDR": "http://x:4646/v1"}, {}, "must not carry a path"),
        ({"NOMAD_CLIENT_CERT": "/etc/hostname"}, {}, "NOMAD_CLIENT_KEY must be set too"),
        ({"NOMAD_CACERT": "/nonexistent/ca.pem"}, {}, "NOMAD_CACERT points to '/nonexistent/ca.pem'"),
        ({}, {"job": "a b"}, "--job must be a Nomad job ID"),
    ],
)
def test_bad_settings_are_named(env: dict[str, str], flags: dict[str, str], message: str) -> None:
    with pytest.raises(NomadSettingsError, match=re.escape(message)):
        load_settings(env, **flags)
    with pytest.raises(ProviderError, match=r"must|points|invalid"):
        NomadProvider(env=env, **flags)  # type: ignore[arg-type]
