"""requirements.lock (issue 11, reproducible installs): what dev.sh and CI install with `pip --require-hashes`.

A dependency added to pyproject.toml without `just deps-upgrade` would be missing from the lock and so from every
fresh install; a venv that is not the lock tests other releases than CI installs. Both fail here.
"""

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


class Pin:
    def __init__(self, requirement: Requirement, hashes: list[str]) -> None:
        self.name = canonicalize_name(requirement.name)
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"{requirement}: the lock pins with ==, not {spec.operator}"
        self.version = Version(spec.version)
        self.marker = requirement.marker
        self.hashes = hashes


def read_lock(path: Path) -> dict[str, Pin]:
    """The pins of a uv/pip-compile requirements file: `name==version [; marker] \\` then `--hash=...` lines."""
    pins: dict[str, Pin] = {}
    requirement: Requirement | None = None
    hashes: list[str] = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip().rstrip("\\").strip()
        if not line:
            continue
        if line.startswith("--hash="):
            assert requirement is not None, f"hash before any requirement: {raw!r}"
            hashes.append(line.removeprefix("--hash="))
            continue
        assert not line.startswith("-"), f"unexpected option in the lock: {raw!r}"
        if requirement is not None:
            pin = Pin(requirement, hashes)
            pins[pin.name] = pin
        requirement, hashes = Requirement(line), []
    if requirement is not None:
        pin = Pin(requirement, hashes)
        pins[pin.name] = pin
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = list(project["project"]["dependencies"])
    for extra in project["project"]["optional-dependencies"].values():
        reqs += extra
    for group in project["dependency-groups"].values():
        reqs += group
    reqs += project["build-system"]["requires"]
    return [Requirement(r) for r in reqs]


def test_every_declared_requirement_is_pinned_in_the_lock_with_a_release_it_allows() -> None:
    pins = read_lock(ROOT / "requirements.lock")
    problems = []
    for req in declared():
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            problems.append(f"{req}: not in requirements.lock")
        elif not req.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{req}: locked at {pin.version}")
    assert not problems, "run `just deps-upgrade <package>`: " + "; ".join(problems)


def test_every_pin_carries_sha256_hashes() -> None:
    pins = read_lock(ROOT / "requirements.lock")
    assert len(pins) > 50  # the whole closure, not only the direct dependencies
    bare = [name for name, pin in pins.items() if not pin.hashes]
    assert not bare, f"pins without a hash (pip --require-hashes refuses the whole lock): {bare}"
    for name, pin in pins.items():
        for digest in pin.hashes:
            algo, _, hexdigest = digest.partition(":")
            assert algo == "sha256" and len(hexdigest) == 64, f"{name}: {digest}"


def test_this_environment_is_exactly_the_lock() -> None:
    """What the suite runs against is what CI installs (dev.sh reinstalls when the lock is newer than the venv)."""
    env = default_environment()
    wrong = []
    for name, pin in read_lock(ROOT / "requirements.lock").items():
        if pin.marker is not None and not pin.marker.evaluate(env):
            continue
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            wrong.append(f"{name} {pin.version} missing")
            continue
        if installed != pin.version:
            wrong.append(f"{name} {installed} installed, {pin.version} locked")
    assert not wrong, "re-run ./dev.sh (it installs the lock): " + "; ".join(wrong)
