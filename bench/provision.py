"""Provisioning benchmark: `make up` from nothing (bootstrap images, no cache), a warm re-run, and the
idle memory of the whole stack.

    .venv/bin/python bench/provision.py [--cold] [--idle-s 60]

Runs the isolated platform instance of the e2e test (tests/e2e/platform-vars.yml: its own projects,
volumes and ports), so it does not touch a platform `make up` started here. --cold first removes every
chexstack/* image and the engine's build cache (so the run bootstraps Debian, downloads and builds
everything); without it the images are reused and "cold" means only new containers and volumes.
Prints a Markdown table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
VARS_FILE = ROOT / "tests" / "e2e" / "platform-vars.yml"
VARS = yaml.safe_load(VARS_FILE.read_text())
ARGS = f"ARGS=-e @{VARS_FILE} -e chexstack_image_source=bootstrap"
PROJECTS = [v for k, v in VARS.items() if k.endswith("_project_name")]
UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "kB": 1000, "MB": 10**6, "GB": 10**9}


def sh(*argv: str, check: bool = True) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}"
        )
    return proc.stdout


def make_up() -> tuple[float, int]:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    t0 = time.monotonic()
    proc = subprocess.run(["make", "-C", str(ROOT), "up", ARGS], capture_output=True, text=True, env=env)
    took = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"make up failed:\n{out[-6000:]}")
    changed = re.search(r"changed=(\d+)", out.split("PLAY RECAP")[-1])
    return took, int(changed.group(1)) if changed else -1


def remove_instance() -> None:
    for project in PROJECTS:
        sh("docker", "compose", "-p", project, "down", "--volumes", "--remove-orphans", check=False)
    for key, volume in VARS.items():
        if key.endswith("_volume"):
            sh("docker", "volume", "rm", "-f", volume, check=False)
    sh("rm", "-rf", VARS["chexstack_data_dir"])


def remove_images() -> None:
    refs = sh("docker", "images", "--format", "{{.Repository}}:{{.Tag}}").split()
    mine = [r for r in refs if r.startswith("chexstack/")]
    if mine:
        sh("docker", "rmi", "-f", *mine)
    sh("docker", "builder", "prune", "-af")


def idle_memory() -> dict[str, float]:
    """Resident memory per container of the instance (docker stats), in MiB."""
    ids = []
    for project in PROJECTS:
        ids += sh("docker", "compose", "-p", project, "ps", "-q").split()
    out = sh("docker", "stats", "--no-stream", "--format", "{{json .}}", *ids)
    mem = {}
    for line in out.splitlines():
        row = json.loads(line)
        used = row["MemUsage"].split("/")[0].strip()
        m = re.fullmatch(r"([\d.]+)\s*([A-Za-z]+)", used)
        assert m, used
        mem[row["Name"]] = float(m.group(1)) * UNITS[m.group(2)] / (1 << 20)
    return mem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cold", action="store_true", help="remove chexstack/* images and the build cache first")
    ap.add_argument("--idle-s", type=float, default=60, help="settle time before measuring memory")
    ns = ap.parse_args()

    remove_instance()
    if ns.cold:
        remove_images()
    cold_s, cold_changed = make_up()
    warm_s, warm_changed = make_up()
    time.sleep(ns.idle_s)
    mem = idle_memory()
    total = sum(mem.values())
    remove_instance()

    what = "no images, no build cache (bootstrap)" if ns.cold else "images cached, no containers or volumes"
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}\n")
    print("| measure | value |")
    print("|---|---|")
    print(f"| first `make up` ({what}) | {cold_s:.0f} s (changed={cold_changed}) |")
    print(f"| second `make up` (nothing to do) | {warm_s:.0f} s (changed={warm_changed}) |")
    print(f"| ratio warm / first | {warm_s / cold_s:.2f} |")
    label = f"**idle memory of the whole stack** ({len(mem)} containers, after {ns.idle_s:.0f} s)"
    print(f"| {label} | **{total / 1024:.2f} GiB** |")
    for name, mib in sorted(mem.items(), key=lambda kv: -kv[1]):
        print(f"| &nbsp;&nbsp;{name} | {mib:.0f} MiB |")


if __name__ == "__main__":
    main()
