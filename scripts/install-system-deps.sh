#!/usr/bin/env bash
# System packages the project needs on a fresh Debian/Ubuntu machine: Python venv, Java 17 and Maven
# (the Kafka broker runs from Maven Central jars), kcat, and Chromium for the browser tests (Playwright
# drives /usr/bin/chromium; it cannot download its own browser here). Installs only what is missing;
# needs root for that.
set -euo pipefail

missing=()
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
command -v kcat >/dev/null 2>&1 || missing+=(kcat)
[ -x /usr/bin/chromium ] || missing+=(chromium)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing system packages: ${missing[*]}; install them (sudo apt-get install ${missing[*]}) and re-run" >&2
  exit 1
fi
echo "installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
