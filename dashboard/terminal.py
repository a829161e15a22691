"""The terminal x0dash runs in, after a hangup (SIGHUP: tmux kill-session, an SSH drop): is it still there, and
pointing stdio away from it so the way out neither fails nor blocks on a dead tty."""

from __future__ import annotations

import os
import sys
import termios


def terminal_alive() -> bool:
    try:
        termios.tcgetattr(sys.__stdin__.fileno())  # type: ignore[union-attr]
    except (termios.error, OSError, ValueError, AttributeError):
        return False
    return True


def detach_terminal() -> None:
    """The terminal hung up: point stdin/stdout/stderr at /dev/null, so the way out (restoring a terminal nobody
    sees, a last message) neither fails nor blocks."""
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
    finally:
        os.close(devnull)
