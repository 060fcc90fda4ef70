#!/usr/bin/env bash
# Build every CheXStack container image from images/*/Dockerfile with images/compose.build.yaml.
#   build.sh [--source bootstrap|pull|auto] [--force] [--no-cache] [IMAGE...]
# --source bootstrap: Debian base from debootstrap (scripts/images/bootstrap-base.sh), Kafka built from
#                     Maven jars; nothing is pulled (air-gapped hosts, CI).
# --source pull:      debian:bookworm-slim, apache/kafka and tensorflow/serving pulled from a registry.
# --source auto:      (default) pull when `docker pull debian:bookworm-slim` works, else bootstrap.
# Images whose tag (a hash of their inputs) already exists are skipped unless --force / --no-cache.
# IMAGE: any of base python kafka tensorboard jupyter (default: all).
# Writes the resolved references to var/images.env (for compose --env-file and the Ansible roles).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

source_=auto force=0 nocache=0 only=()
while [ $# -gt 0 ]; do
  case "$1" in
    --source) source_="$2"; shift 2 ;;
    --source=*) source_="${1#*=}"; shift ;;
    --force) force=1; shift ;;
    --no-cache) nocache=1; force=1; shift ;;
    -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
    base | python | kafka | tensorboard | jupyter) only+=("$1"); shift ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

t0=$SECONDS
ensure_docker
ensure_compose
[ -r "$CHEXSTACK_CA_BUNDLE" ] || die "CA bundle $CHEXSTACK_CA_BUNDLE not readable (set CHEXSTACK_CA_BUNDLE)"

pull_image() { # pull unless present; returns non-zero when the registry cannot be reached
  image_exists "$1" && return 0
  log "pulling $1"
  timeout "${CHEXSTACK_PULL_TIMEOUT:-300}" docker pull -q "$1" >/dev/null
}

if [ "$source_" = auto ]; then
  if timeout 60 docker pull -q "$DEBIAN_PULL_IMAGE" >/dev/null 2>&1; then source_=pull; else source_=bootstrap; fi
  log "image source: $source_ (auto)"
fi
compute_tags "$source_"
mkdir -p "$IMAGES_REPO_ROOT/var"
bash "$(dirname "$0")/tags.sh" --source "$source_" >"$IMAGES_REPO_ROOT/var/images.env"

declare -a report=()
record() { report+=("$(printf '%-12s %-8s %5ss  %s' "$1" "$2" "$3" "$4")"); }

if [ "$source_" = bootstrap ]; then
  s=$SECONDS
  if image_exists "$CHEXSTACK_ROOTFS_IMAGE"; then st=exists; else st=built; fi
  bash "$(dirname "$0")/bootstrap-base.sh" >/dev/null
  record debian-base "$st" $((SECONDS - s)) "$CHEXSTACK_ROOTFS_IMAGE"
else
  for ref in "$DEBIAN_PULL_IMAGE" "$KAFKA_PULL_IMAGE" "$TF_SERVING_PULL_IMAGE"; do
    s=$SECONDS
    if image_exists "$ref"; then st=exists; else st=pulled; fi
    pull_image "$ref" || die "cannot pull $ref: use --source bootstrap on hosts without a registry"
    record "$(basename "${ref%%:*}")" "$st" $((SECONDS - s)) "$ref"
  done
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    s=$SECONDS
    pull_image "$TF_SERVING_GPU_PULL_IMAGE" || die "cannot pull $TF_SERVING_GPU_PULL_IMAGE"
    record serving-gpu pulled $((SECONDS - s)) "$TF_SERVING_GPU_PULL_IMAGE"
  fi
fi

declare -A ref_of=(
  [base]=$CHEXSTACK_BASE_IMAGE [python]=$CHEXSTACK_PYTHON_IMAGE [tensorboard]=$CHEXSTACK_TENSORBOARD_IMAGE
  [kafka]=$CHEXSTACK_KAFKA_IMAGE [jupyter]=$CHEXSTACK_JUPYTER_IMAGE
)
wanted() { [ ${#only[@]} -eq 0 ] && return 0; local x; for x in "${only[@]}"; do [ "$x" = "$1" ] && return 0; done; return 1; }
logdir="$IMAGES_REPO_ROOT/var/images-logs"
mkdir -p "$logdir"

# Parents before children; compose builds the services of one group in parallel.
for group in "base" "python kafka" "tensorboard jupyter"; do
  todo=()
  for svc in $group; do
    [ "$svc" = kafka ] && [ "$source_" = pull ] && continue   # the official apache/kafka image
    # A parent is built when a child needs it, even if not asked for.
    if ! wanted "$svc"; then
      case "$svc" in
        base) image_exists "${ref_of[base]}" && continue ;;
        python) image_exists "${ref_of[python]}" && continue ;;
        *) continue ;;
      esac
    fi
    if [ "$force" -eq 0 ] && image_exists "${ref_of[$svc]}"; then
      record "$svc" exists 0 "${ref_of[$svc]}"
    else
      todo+=("$svc")
    fi
  done
  [ ${#todo[@]} -eq 0 ] && continue
  s=$SECONDS
  name="$(IFS=-; echo "${todo[*]}")"
  log "building ${todo[*]} (log: $logdir/$name.log)"
  args=(build)
  [ "$nocache" -eq 1 ] && args+=(--no-cache)
  # COMPOSE_BAKE=false: there is no buildx; compose builds through the engine's BuildKit.
  if ! COMPOSE_BAKE=false docker compose --progress plain -f "$IMAGES_REPO_ROOT/images/compose.build.yaml" \
    "${args[@]}" "${todo[@]}" >"$logdir/$name.log" 2>&1; then
    tail -n 40 "$logdir/$name.log" >&2
    die "building ${todo[*]} failed; full log: $logdir/$name.log"
  fi
  for svc in "${todo[@]}"; do record "$svc" built $((SECONDS - s)) "${ref_of[$svc]}"; done
done

echo "image source: $source_   (references in var/images.env)"
printf '%-12s %-8s %6s  %s  %s\n' IMAGE STATUS TIME REFERENCE SIZE
for line in "${report[@]}"; do
  ref="${line##* }"
  size="$(docker image inspect -f '{{.Size}}' "$ref" 2>/dev/null | awk '{printf "%.0f MB", $1/1e6}')"
  echo "$line  $size"
done
echo "total: $((SECONDS - t0)) s"
