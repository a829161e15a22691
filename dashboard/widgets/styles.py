"""Colours and symbols for states, shared by every widget so a state looks the same everywhere."""

from __future__ import annotations

NODE_STYLE = {
    "up": "bold green",
    "degraded": "bold yellow",
    "silent": "bold dark_orange",
    "down": "bold red",
    "unknown": "grey50",
}
NODE_SYMBOL = {"up": "●", "degraded": "◐", "silent": "◌", "down": "✖", "unknown": "?"}
LINK_STYLE = {"up": "green", "silent": "yellow", "down": "red", "temporary": "cyan", "unknown": "grey42"}
# The matrix/list symbol of a link state (also readable without colour).
LINK_SYMBOL = {"up": "█", "silent": "▒", "down": "×", "temporary": "+", "unknown": "?"}  # noqa: RUF001
LEVEL_STYLE = {"info": "", "ok": "green", "warn": "yellow", "error": "bold red"}


def fmt_age(age_s: float | None) -> str:
    if age_s is None:
        return "never"
    if age_s < 10:
        return f"{age_s:.1f} s"
    if age_s < 120:
        return f"{age_s:.0f} s"
    if age_s < 7200:
        return f"{age_s / 60:.0f} min"
    return f"{age_s / 3600:.0f} h"


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms"
