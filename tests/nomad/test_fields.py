"""Every Nomad key x0dash reads exists in Nomad's structs (FIELDS-structs-1.11.2.json): we never read a field a
real server does not send. Keys are read through `field(obj, "Struct.Key")`, found here by walking the AST."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.nomad import shapes

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [*sorted((ROOT / "dashboard" / "nomad").glob("*.py")), ROOT / "dashboard" / "providers" / "nomad.py"]


def reads() -> list[tuple[str, str, str]]:
    out = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "field"
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
            ):
                out.append((path.name, *node.args[1].value.split(".", 1)))
    return out


def test_every_key_read_is_a_field_of_that_nomad_struct() -> None:
    found = reads()
    assert len(found) > 40, "the AST walk found too few reads: did the accessor change?"
    structs = shapes.fields()
    bad = [
        f"{src}: {struct}.{key}"
        for src, struct, key in found
        if struct not in structs or key not in structs[struct]["fields"]
    ]
    assert bad == []


def test_dict_access_on_nomad_objects_goes_through_field() -> None:
    # The only raw `.get(` on Nomad data are the free-form maps (Task.Env, variable Items) that have no schema.
    for path in SOURCES:
        text = path.read_text()
        for line in text.splitlines():
            free_form = ("env.get", "items.get", "values.get")
            if '.get("' in line and not any(f in line for f in free_form):
                raise AssertionError(f"{path.name}: direct key read {line.strip()!r}")
