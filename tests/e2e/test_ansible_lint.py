"""The Ansible content lints clean: ansible-lint (production profile) and yamllint.

Runs the linters of the project's virtualenv (the ones requirements.txt pins) from the repository
root, so .ansible-lint and .yamllint apply; a failure shows the linter's full output.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# The Ansible content; yamllint --strict also fails on warnings there.
ANSIBLE_PATHS = [
    "site.yml",
    "down.yml",
    "playbook",
    "roles",
    "inventory",
    ".config",
    ".ansible-lint",
    ".yamllint",
]


def _tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run `make venv` (requirements.txt pins it)")
    return found


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NO_COLOR="1", ANSIBLE_FORCE_COLOR="0", PY_COLORS="0")
    # The venv's bin first: ansible-lint runs ansible-playbook --syntax-check and ansible-galaxy.
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)


def _assert_ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, (
        f"{' '.join(proc.args)} exited {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )


def test_ansible_lint_production_profile() -> None:
    proc = _run([_tool("ansible-lint"), "--profile", "production", "--offline", "--nocolor"])
    _assert_ok(proc)
    assert "Profile 'production' was required, and it passed" in proc.stdout + proc.stderr, (
        proc.stdout + proc.stderr
    )


def test_yamllint_ansible_content_strict() -> None:
    _assert_ok(_run([_tool("yamllint"), "--strict", "-f", "parsable", *ANSIBLE_PATHS]))


def test_yamllint_repository() -> None:
    _assert_ok(_run([_tool("yamllint"), "-f", "parsable", "."]))
