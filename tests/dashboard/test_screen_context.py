"""The screens see the app only through `dashboard.screens.context.Dashboard`: the app must really provide it."""

from __future__ import annotations

import inspect
from pathlib import Path

from dashboard.app import X0Dash
from dashboard.providers.inventory import InventoryProvider
from dashboard.screens.context import Dashboard

from .test_app_offline import write_inventory


def protocol_names() -> set[str]:
    names = set(Dashboard.__annotations__)
    names |= {
        n for n, v in vars(Dashboard).items() if not n.startswith("_") and (callable(v) or isinstance(v, property))
    }
    return names


def test_the_app_provides_what_the_screens_use(tmp_path: Path) -> None:
    app = X0Dash(InventoryProvider(write_inventory(tmp_path / "inv.json", [1, 2, 3])), reports_dir=tmp_path)
    names = protocol_names()
    assert {"view", "engine", "session", "drill_banner", "start_drill", "undo_drain"} <= names
    missing = sorted(n for n in names if not hasattr(app, n))
    assert missing == [], f"X0Dash lacks what screens use: {missing}"
    for name in names - set(Dashboard.__annotations__):
        want = getattr(Dashboard, name)
        if isinstance(want, property):
            assert isinstance(inspect.getattr_static(app, name), property), name
        else:
            got = inspect.signature(getattr(app, name)).parameters
            assert list(got) == list(inspect.signature(want).parameters)[1:], name


def test_every_attribute_the_screens_read_is_in_the_protocol() -> None:
    import re

    used: set[str] = set()
    for path in (Path(__file__).resolve().parents[2] / "dashboard" / "screens").glob("*.py"):
        used |= set(re.findall(r"\bdash\.([a-z_]+)", path.read_text()))
    assert used, "no screen reads the app? the pattern is stale"
    assert used <= protocol_names(), sorted(used - protocol_names())
