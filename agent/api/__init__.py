"""x0-agent HTTP API: Litestar app factory, controllers per domain, msgspec payloads."""
