"""x0-agent: one per mesh node, beside a real Yggdrasil daemon."""

__version__ = "0.1.0"
