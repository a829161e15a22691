"""`just nomad-dev` without Nomad installed: says how to install it and exits non-zero."""

from __future__ import annotations

import os
import shutil
import subprocess

from tests.nomad.jobspec import ROOT


def test_nomad_dev_without_nomad_explains_and_fails(tmp_path) -> None:
    # A PATH with bash and coreutils but no nomad, whatever the machine has installed.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("bash", "dirname", "cat"):
        os.symlink(shutil.which(tool), bindir / tool)
    proc = subprocess.run(
        [str(bindir / "bash"), str(ROOT / "nomad" / "dev-up.sh")],
        capture_output=True,
        text=True,
        env={"PATH": str(bindir)},
        timeout=30,
    )
    assert proc.returncode == 127
    assert "`nomad` binary is not installed" in proc.stderr
    assert "https://developer.hashicorp.com/nomad/install" in proc.stderr
    assert "just demo" in proc.stderr


def test_just_recipe_runs_the_script() -> None:
    text = (ROOT / "justfile").read_text()
    assert "\nnomad-dev:\n    nomad/dev-up.sh\n" in text
    assert os.access(ROOT / "nomad" / "dev-up.sh", os.X_OK)
