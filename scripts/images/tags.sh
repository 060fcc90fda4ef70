#!/usr/bin/env bash
# Print every image reference of the platform for an image source, as KEY=value lines (a compose
# --env-file / Ansible vars), derived from images/versions.env and a hash of each image's inputs.
#   tags.sh [--source bootstrap|pull] [--export]
# --export prints `export KEY=value` lines for `eval`. Without --source: the source of the last
# scripts/images/build.sh run (var/images.env), else bootstrap.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

source_=""
export_=0
while [ $# -gt 0 ]; do
  case "$1" in
    --source) source_="$2"; shift 2 ;;
    --source=*) source_="${1#*=}"; shift ;;
    --export) export_=1; shift ;;
    -h | --help) sed -n '2,6p' "$0"; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
done
if [ -z "$source_" ]; then
  source_="$(sed -n 's/^CHEXSTACK_IMAGE_SOURCE=//p' "$IMAGES_REPO_ROOT/var/images.env" 2>/dev/null || true)"
  source_="${source_:-bootstrap}"
fi
compute_tags "$source_"
{
  print_tags
  grep -E '^[A-Z_]+=' "$IMAGES_REPO_ROOT/images/versions.env"
  echo "CHEXSTACK_CA_BUNDLE=$CHEXSTACK_CA_BUNDLE"
} | if [ "$export_" -eq 1 ]; then sed 's/^/export /'; else cat; fi
