#!/usr/bin/env bash
# Make the Debian base image locally, without any container registry:
#   debootstrap --variant=minbase (ca-certificates, python3, python3-venv) | docker import
# -> chexstack/debian-base:<suite>-<serial> (images/versions.env). Skips when that image exists; the
# rootfs tarball is cached under $CHEXSTACK_CACHE/images/ so another run (or a rebuilt engine) only
# re-imports it. Needs root (debootstrap) and the Debian archive (DEBIAN_MIRROR).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

INCLUDE=ca-certificates,python3,python3-venv
force=0
[ "${1:-}" = "--force" ] && force=1

ensure_docker
image="chexstack/debian-base:${DEBIAN_SUITE}-${DEBIAN_BOOTSTRAP_SERIAL}"
if [ "$force" -eq 0 ] && image_exists "$image"; then
  log "$image exists: skipping"
  echo "$image"
  exit 0
fi

recipe="$(hash_text "$DEBIAN_SUITE" "$DEBIAN_MIRROR" "$INCLUDE" minbase)"
tarball="$IMAGES_CACHE/rootfs-${DEBIAN_SUITE}-${DEBIAN_BOOTSTRAP_SERIAL}-${recipe}.tar.gz"
mkdir -p "$IMAGES_CACHE"
start=$SECONDS

if [ "$force" -eq 1 ] || [ ! -s "$tarball" ]; then
  [ "$(id -u)" -eq 0 ] || die "debootstrap needs root"
  if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  fi
  work="$(mktemp -d "$IMAGES_CACHE/rootfs.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  rootfs="$work/rootfs"
  log "debootstrap $DEBIAN_SUITE ($INCLUDE) from $DEBIAN_MIRROR"
  if ! debootstrap --variant=minbase --include="$INCLUDE" "$DEBIAN_SUITE" "$rootfs" "$DEBIAN_MIRROR" \
    >"$work/debootstrap.log" 2>&1; then
    tail -n 30 "$work/debootstrap.log" >&2
    [ -f "$rootfs/debootstrap/debootstrap.log" ] && tail -n 30 "$rootfs/debootstrap/debootstrap.log" >&2
    die "debootstrap failed"
  fi
  # Make it look like the official debian:<suite>-slim: deb822 sources with updates and security,
  # no host files (docker provides hostname, hosts and resolv.conf), no package caches.
  rm -f "$rootfs/etc/apt/sources.list" "$rootfs/etc/hostname" "$rootfs/etc/resolv.conf"
  : >"$rootfs/etc/hosts"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $DEBIAN_MIRROR
Suites: $DEBIAN_SUITE $DEBIAN_SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${DEBIAN_MIRROR%/debian}/debian-security
Suites: $DEBIAN_SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log "$rootfs"/debootstrap "$rootfs"/tmp/*
  : >"$rootfs/etc/machine-id"
  log "packing the rootfs into $tarball"
  tar -C "$rootfs" --numeric-owner -cf - . | gzip -1 >"$work/rootfs.tar.gz"
  mv "$work/rootfs.tar.gz" "$tarball"
  rm -rf "$work"
  trap - EXIT
else
  log "reusing cached rootfs $tarball"
fi

log "importing $image"
docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' \
  --change "LABEL org.opencontainers.image.title=chexstack/debian-base org.opencontainers.image.description=\"Debian $DEBIAN_SUITE minbase from debootstrap (CheXStack bootstrap path)\" org.opencontainers.image.version=$DEBIAN_SUITE-$DEBIAN_BOOTSTRAP_SERIAL org.opencontainers.image.licenses=various" \
  --message "debootstrap --variant=minbase --include=$INCLUDE $DEBIAN_SUITE ($DEBIAN_BOOTSTRAP_SERIAL)" \
  "$tarball" "$image" >/dev/null
log "$image ready in $((SECONDS - start)) s ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'))"
echo "$image"
