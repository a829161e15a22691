"""Read nomad/*.hcl the way Nomad's jobspec2 would for what the tests need: python-hcl2 parses the file, and the
few HCL string features the job uses are evaluated here: flush heredocs (`<<-EOT`, common indentation removed),
`${var.x}` / `${var.x.y}` / `${local.x}` interpolation, and the `$${` escape that leaves `${...}` for Nomad's
runtime interpolation. Anything else inside `${...}` is an error, so the tests notice new syntax."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import hcl2
from hcl2 import SerializationOptions

ROOT = Path(__file__).resolve().parents[2]
JOB_FILE = ROOT / "nomad" / "mesh.nomad.hcl"
DEV_VARS = ROOT / "nomad" / "dev.vars.hcl"

_OPTS = SerializationOptions(with_comments=False, strip_string_quotes=True, explicit_blocks=False)
_REF = re.compile(r"(?<!\$)\$\{([^}]*)\}")


def load(path: Path) -> dict[str, Any]:
    with path.open() as f:
        return hcl2.load(f, serialization_options=_OPTS)


def heredoc(raw: str) -> str:
    """Body of a `<<-EOT` heredoc with the common leading whitespace removed (HCL flush heredoc)."""
    first, _, rest = raw.partition("\n")
    assert first.startswith("<<-"), f"expected a flush heredoc, got {first!r}"
    marker = first[3:]
    lines = rest.split("\n")
    assert lines[-1].strip() == marker
    body = lines[:-1]
    indent = min((len(line) - len(line.lstrip(" ")) for line in body if line.strip()), default=0)
    return "\n".join(line[indent:] for line in body) + "\n"


def declared_vars(doc: dict[str, Any]) -> dict[str, Any]:
    return {name: spec.get("default") for block in doc.get("variable", []) for name, spec in block.items()}


def locals_of(doc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for block in doc.get("locals", []):
        out.update(block)
    return out


def _lookup(ref: str, variables: dict[str, Any], local_values: dict[str, Any]) -> Any:
    head, _, path = ref.partition(".")
    scope = {"var": variables, "local": local_values}.get(head)
    if scope is None:
        raise ValueError(f"unsupported HCL reference ${{{ref}}}")
    value: Any = scope
    for part in path.split("."):
        value = value[part]
    return value


def evaluate(text: str, variables: dict[str, Any], local_values: dict[str, Any]) -> str:
    """Interpolate one HCL template string (already unquoted / heredoc-stripped)."""
    if text.startswith("<<-"):
        text = heredoc(text)

    def sub(m: re.Match[str]) -> str:
        value = _lookup(m.group(1).strip(), variables, local_values)
        if isinstance(value, str):
            return evaluate(value, variables, local_values) if "${" in value else value
        return str(value)

    out = _REF.sub(sub, text)
    return out.replace("$${", "${").replace("%%{", "%{")


def job_block(doc: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    ((name, body),) = doc["job"][0].items()
    return name, body


def groups(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: body for g in job["group"] for name, body in g.items()}


def tasks(group: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: body for t in group["task"] for name, body in t.items()}
