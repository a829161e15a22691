"""x0-agent: one per mesh node, beside a real Yggdrasil daemon."""

import sys

__version__ = "0.1.0"

# httpx imports its command-line client (click, rich, pygments: ~80 modules, 4.5 MB of every agent's memory)
# whenever those are installed, and they are wherever x0dash is (Textual needs rich). No agent runs httpx's CLI:
# with this entry httpx takes its own fallback for a missing CLI. It must come before anything imports httpx.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
