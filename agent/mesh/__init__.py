"""The node's read API: health, mesh views and metrics, and their wire payloads."""
