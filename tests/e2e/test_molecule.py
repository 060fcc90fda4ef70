"""Every role's Molecule `default` scenario: converge, idempotence and verify against this machine.

Each scenario uses its own compose project names, network, volumes and ports, so it runs beside a
platform that is up. What the scenarios share is .config/molecule/config.yml, which Molecule merges
under each scenario's molecule.yml. A failure shows the end of Molecule's output.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Molecule finds it by itself in a git checkout; named here so a copy without .git runs the same.
BASE_CONFIG = ROOT / ".config" / "molecule" / "config.yml"
# In site.yml order, so a broken early role fails first.
ROLES = [
    "preflight",
    "docker",
    "compose_service",
    "images",
    "kafka",
    "serving",
    "workers",
    "hub",
    "ingest",
    "jupyter",
    "tensorboard",
    "trainer",
]


def test_every_role_has_a_scenario() -> None:
    roles = sorted(p.name for p in (ROOT / "roles").iterdir() if p.is_dir())
    assert roles == sorted(ROLES)
    for role in roles:
        assert (ROOT / "roles" / role / "molecule" / "default" / "molecule.yml").is_file(), role


def test_scenarios_share_one_base_config() -> None:
    """The driver, platform, inventory links and test sequence are written once: no scenario repeats them."""
    base = yaml.safe_load(BASE_CONFIG.read_text())
    assert base["driver"] == {"name": "default", "options": {"managed": False}}
    assert "cleanup" in base["scenario"]["test_sequence"]
    for role in ROLES:
        own = (
            yaml.safe_load((ROOT / "roles" / role / "molecule" / "default" / "molecule.yml").read_text())
            or {}
        )
        assert not {"dependency", "driver", "platforms"} & set(own), role
        assert "inventory" not in own.get("provisioner", {}), role


@pytest.mark.parametrize("role", ROLES)
# The images scenario builds every image on a clean engine: longer than the tier's 600 s
# default; above the subprocess timeout below, so that one reports first.
@pytest.mark.timeout(1900)
def test_molecule_default_scenario(role: str) -> None:
    env = dict(os.environ, NO_COLOR="1", PY_COLORS="0", ANSIBLE_FORCE_COLOR="0")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        [str(BIN / "molecule"), "--base-config", str(BASE_CONFIG), "test"],
        cwd=ROOT / "roles" / role,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"molecule test in roles/{role} exited {proc.returncode}:\n{out[-8000:]}"
    # The scenario really ran the role: converge and idempotence both executed.
    assert "converge: Executed: Successful" in out, out[-4000:]
    assert "idempotence: Executed: Successful" in out, out[-4000:]
