"""The server and its OpenAPI document agree, strictly (issue 11 item 6).

- Bodies: Litestar converts a handler's `data` with `strict=False` (it shares the path with query parameters,
  which arrive as strings), so `{"duration_s": "5"}` passed as the number 5 although the schema says number.
  `strict_body` (an app-level `before_request`, after the guards, before the handler) decodes every JSON body
  once more with `strict=True` into the handler's msgspec type: a string where a number belongs is a 400 naming
  the field.
- Schema: a msgspec Struct that forbids unknown fields gets `additionalProperties: false` in the document
  (`mark_closed_objects`); Litestar leaves it out.
- Other answers: a handler that may also answer raw bytes (`GET /kv/{key}?raw=true`) says so in its
  `opt={"also_answers": media type}`; Litestar documents only the typed JSON answer, so the document gets the
  other media type on the 200 too (a client, or schemathesis' content-type check, would otherwise flag it).
- OPTIONS: Litestar builds a path's automatic OPTIONS answer before all of that path's handlers are registered
  (`OPTIONS /drills` said `GET, OPTIONS` without POST); `AllowHeader` answers with the route's real methods.
"""

from __future__ import annotations

import typing
from typing import Any

import msgspec
from litestar import Litestar, Request
from litestar.exceptions import ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.spec import OpenAPIFormat, OpenAPIMediaType, OpenAPIType, Schema
from litestar.routes import HTTPRoute
from litestar.types import ASGIApp, Message, Receive, Scope, Send

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_types: dict[int, type[msgspec.Struct] | None] = {}


def body_type(handler: HTTPRouteHandler) -> type[msgspec.Struct] | None:
    """The msgspec Struct a handler's JSON `data` is decoded into, or None (no body, raw bytes...)."""
    key = id(handler)
    if key not in _types:
        found: type[msgspec.Struct] | None = None
        param = handler.parsed_fn_signature.parameters.get("data")
        if param is not None:
            annotation = param.annotation
            while typing.get_origin(annotation) is typing.Annotated:
                annotation = typing.get_args(annotation)[0]
            if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
                found = annotation
        _types[key] = found
    return _types[key]


async def strict_body(request: Request[Any, Any, Any]) -> None:
    if request.method not in _BODY_METHODS:
        return None
    handler = request.route_handler
    kind = body_type(handler) if isinstance(handler, HTTPRouteHandler) else None
    if kind is None:
        return None
    body = await request.body()
    try:
        msgspec.json.decode(body, type=kind, strict=True)
    except msgspec.ValidationError as exc:
        raise ValidationException(detail=f"invalid request body: {exc}") from None
    except msgspec.DecodeError:
        pass  # not JSON at all: Litestar's own decoding answers 400 with its reason
    return None


def mark_closed_objects(app: Litestar) -> None:
    """additionalProperties: false for every request body type that forbids unknown fields."""
    closed: set[str] = set()
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            kind = body_type(handler)
            if kind is not None and kind.__struct_config__.forbid_unknown_fields:
                closed.add(kind.__name__)
    schemas = app.openapi_schema.components.schemas or {}
    for name in closed:
        if name in schemas:
            schemas[name].additional_properties = False
    # A handler typed `Struct | Response` is documented as oneOf [Struct, {}]: `{}` matches everything, so a
    # valid Struct matches twice and violates oneOf (schemathesis found it on GET /kv). anyOf says what is meant.
    for item in (app.openapi_schema.paths or {}).values():
        for op in (item.get, item.put, item.post, item.delete, item.patch):
            for resp in (op.responses or {}).values() if op is not None else ():
                for media in (getattr(resp, "content", None) or {}).values():
                    sch = media.schema
                    if getattr(sch, "one_of", None) and any(_is_empty(x) for x in sch.one_of):
                        sch.any_of, sch.one_of = sch.one_of, None
    _document_other_media(app)


def _document_other_media(app: Litestar) -> None:
    paths = app.openapi_schema.paths or {}
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            media = handler.opt.get("also_answers")
            item = paths.get(route.path_format)
            if not media or item is None:
                continue
            for method in handler.http_methods:
                op = getattr(item, method.lower(), None)
                ok = (op.responses or {}).get("200") if op is not None else None
                if ok is not None and ok.content is not None:
                    ok.content[media] = OpenAPIMediaType(
                        schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
                    )


def _is_empty(schema: object) -> bool:
    fields = ("type", "ref", "one_of", "any_of", "all_of", "properties", "items", "enum")
    return not any(getattr(schema, f, None) for f in fields)


class AllowHeader:
    """OPTIONS answers name every method of the matched route (see the module docstring)."""

    def __init__(self, app: ASGIApp, litestar: Litestar) -> None:
        self.app = app
        self.allowed = {
            route.path_format: ", ".join(sorted(route.methods))
            for route in litestar.routes
            if isinstance(route, HTTPRoute)
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "OPTIONS":
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                allow = self.allowed.get(scope.get("path_template") or "")  # type: ignore[call-overload]
                if allow is not None:
                    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"allow"]
                    headers.append((b"allow", allow.encode("latin-1")))
                    message = {**message, "headers": headers}  # type: ignore[typeddict-item]
            await send(message)

        await self.app(scope, receive, send_wrapper)
