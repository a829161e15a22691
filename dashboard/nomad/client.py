"""The one place x0dash calls Nomad: python-nomad requesters with our settings, every failure a NomadError.

We build python-nomad's Requester objects ourselves instead of `nomad.Nomad(...)`: the constructor silently falls
back to NOMAD_* environment variables for any argument left empty, which would let the environment override a
value the operator passed with --nomad (and makes tests depend on the caller's shell). `user_agent` stays unset:
with no token it raises TypeError on every request (python-nomad 2.1.0 bug, reference/nomad.md §2.3).

Gaps filled by hand (reference/nomad.md §2.2): no services API in python-nomad (`_Services`), restart with a
body, tolerant JSON decoding of write responses (`{"Index": n}` from the server, `{}` in the docs, nothing at all
from some proxies).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import requests
from nomad.api.base import Requester

from dashboard.nomad.errors import classify
from dashboard.nomad.settings import NomadSettings
from nomad import api

T = TypeVar("T")

# How long the event stream may stay silent: Nomad sends a `{}` heartbeat every 30 s (reference/nomad.md §1.4).
STREAM_READ_TIMEOUT_S = 45.0


class _Services(Requester):
    ENDPOINT = "service"


class _EventStream(Requester):
    ENDPOINT = "event/stream"


class _AllocLogs(Requester):
    ENDPOINT = "client/fs/logs"


def _json(resp: requests.Response, *, empty: Any = None) -> Any:
    if not resp.content.strip():
        return empty
    return resp.json()


class NomadClient:
    """Synchronous (requests); call from worker threads. Thread-safe enough for one refresh thread plus one event
    stream thread: each uses its own requester call, sharing one connection pool."""

    def __init__(self, settings: NomadSettings, *, session: requests.Session | None = None) -> None:
        self.settings = settings
        self.session = session or requests.Session()
        self._requester_settings: dict[str, Any] = {
            "address": settings.address,
            "uri": settings.address,
            "port": 0,
            "user_agent": None,
            "namespace": settings.namespace,
            "token": settings.token,
            "timeout": settings.timeout_s,
            "version": "v1",
            "verify": settings.verify,
            "cert": settings.cert,
            "region": settings.region,
            "session": self.session,
        }
        rs = self._requester_settings
        self._job = api.Job(**rs)
        self._allocation = api.Allocation(**rs)
        self._client_allocation = api.Client(**rs).allocation
        self._node = api.Node(**rs)
        self._nodes = api.Nodes(**rs)
        self._variable = api.Variable(**rs)
        self._services = _Services(**rs)
        self._events = _EventStream(**rs)
        self._logs = _AllocLogs(**rs)

    def close(self) -> None:
        self.session.close()

    def _call(self, operation: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except Exception as exc:  # python-nomad, requests and JSON errors all become one NomadError
            raise classify(
                exc, operation, namespace=self.settings.namespace_or_default, address=self.settings.address
            ) from exc

    # Reads ----------------------------------------------------------------------------------------------------
    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("read job", lambda: self._expect(dict, self._job.get_job(job_id)))

    def job_allocations(self, job_id: str) -> list[dict[str, Any]]:
        return self._call("list allocations", lambda: self._expect(list, self._job.get_allocations(job_id)))

    def allocation(self, alloc_id: str) -> dict[str, Any]:
        return self._call("read allocation", lambda: self._expect(dict, self._allocation.get_allocation(alloc_id)))

    def nodes(self) -> list[dict[str, Any]]:
        return self._call("list nodes", lambda: self._expect(list, self._nodes.get_nodes()))

    def node_allocations(self, node_id: str) -> list[dict[str, Any]]:
        """GET /v1/node/:id/allocations: every job's allocations on that Nomad node (what a drain stops)."""
        return self._call("list node allocations", lambda: self._expect(list, self._node.get_allocations(node_id)))

    def service(self, name: str) -> list[dict[str, Any]]:
        """GET /v1/service/:name (an unknown name is `[]`, not 404)."""
        params = {"namespace": self.settings.namespace_or_default}
        return self._call(
            "read services",
            lambda: self._expect(list, _json(self._services.request(name, method="get", params=params), empty=[])),
        )

    def variable(self, path: str) -> dict[str, Any]:
        # Variables never get the client namespace appended by python-nomad: pass it.
        return self._call(
            "read variable",
            lambda: self._expect(
                dict, self._variable.get_variable(path, namespace=self.settings.namespace_or_default)
            ),
        )

    # Writes ---------------------------------------------------------------------------------------------------
    def stop_allocation(self, alloc_id: str) -> dict[str, Any]:
        """POST /v1/allocation/:id/stop → {"EvalID", "Index"}."""
        return self._call(
            "stop allocation",
            lambda: self._expect(dict, _json(self._allocation.request(alloc_id, "stop", method="post"), empty={})),
        )

    def restart_allocation(self, alloc_id: str, task: str | None = None) -> dict[str, Any]:
        """POST /v1/client/allocation/:id/restart; python-nomad's helper sends no body, so no TaskName."""
        body: dict[str, Any] = {"TaskName": task} if task else {}
        return self._call(
            "restart allocation",
            lambda: self._expect(
                dict,
                _json(self._client_allocation.request(alloc_id, "restart", json=body, method="post"), empty={}),
            ),
        )

    def drain_node(
        self, node_id: str, deadline_s: float | None, *, mark_eligible: bool | None = None
    ) -> dict[str, Any]:
        """Enable a drain (deadline_s set) or cancel it (None). The legacy `drain_node` sends no body and gets
        400 "Request body is empty" on modern Nomad, so use the spec form."""
        spec = {"Deadline": int(deadline_s * 1e9), "IgnoreSystemJobs": False} if deadline_s is not None else None
        return self._call(
            "drain node",
            lambda: self._expect(
                dict, self._node.drain_node_with_spec(node_id, spec, mark_eligible=mark_eligible)
            ),
        )

    def alloc_logs(self, alloc_id: str, task: str, stream: str, max_bytes: int) -> str:
        """The tail of a task's stdout or stderr: GET /v1/client/fs/logs/:alloc_id with plain=true (the text
        without base64 frames), origin=end and offset=max_bytes, no follow (api-docs/client.mdx, Stream Logs;
        ACL read-logs or read-fs; 404 when the task's logging is disabled)."""
        params = {"task": task, "type": stream, "origin": "end", "offset": max_bytes, "plain": "true"}
        return self._call("read logs", lambda: self._logs.request(alloc_id, method="get", params=params).text)

    # Event stream ---------------------------------------------------------------------------------------------
    def open_event_stream(self, *, index: int, topics: list[str]) -> requests.Response:
        """Open GET /v1/event/stream (NDJSON); the caller iterates lines and closes the response."""
        params: dict[str, Any] = {"index": index, "topic": topics, "namespace": self.settings.namespace_or_default}
        return self._call(
            "event stream",
            lambda: self._events.request(
                method="get", params=params, stream=True, timeout=(self.settings.timeout_s, STREAM_READ_TIMEOUT_S)
            ),
        )

    @staticmethod
    def _expect(type_: type[T], value: object) -> T:
        if not isinstance(value, type_):
            raise ValueError(f"expected a JSON {type_.__name__}, got {type(value).__name__}")
        return value
