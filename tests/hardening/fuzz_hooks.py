"""Schemathesis hooks for tests/hardening/test_fuzz.py (loaded through SCHEMATHESIS_HOOKS).

`no_unexpected_5xx`: any 5xx fails, except a 503 carrying the API's JSON (an ErrorBody detail, or /health's
checks): the agent answers that by contract when the daemon is down (a fuzzed kill-daemon drill does that) or
Raft has no quorum.
"""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.check
def no_unexpected_5xx(ctx: Any, response: Any, case: Any) -> None:
    if response.status_code < 500:
        return None
    if response.status_code == 503:
        try:
            body = response.json()
        except ValueError:
            raise AssertionError("503 without the JSON error body") from None
        if isinstance(body, dict) and (body.get("detail") or body.get("checks")):
            return None
    raise AssertionError(f"server error {response.status_code}: {response.text[:300]}")
