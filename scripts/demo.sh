#!/usr/bin/env bash
# `make demo`: the whole streaming path on this machine without Docker, then everything stopped.
# broker -> exported CheXNet -> `chexstack serve` -> preprocess + route workers -> synthetic uploads
#
# It runs beside a running platform (`make up`) or another demo: its ports are found free here, and each
# run gets a new directory outside the checkout (broker data, blob store, logs), so every run sends its
# images through the pipeline afresh. Only the exported model is kept between runs, in the cache.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export TF_CPP_MIN_LOG_LEVEL=2
COUNT="${CHEXSTACK_DEMO_COUNT:-8}"
CACHE="${CHEXSTACK_CACHE:-$HOME/.cache/chexstack}"
MODEL_BASE="$CACHE/demo-model/chexnet"
RUN="$(mktemp -d "${TMPDIR:-/tmp}/chexstack-demo.XXXXXX")"
export CHEXSTACK_HOME="$RUN"
export CHEXSTACK_STORE="$RUN/blobs"
mkdir -p "$RUN/logs"

# Three free ports: Kafka's client port (its KRaft controller takes the next one), serving's gRPC and REST.
read -r KAFKA_PORT GRPC_PORT REST_PORT < <(python - <<'EOF'
import socket


def free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def any_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


kafka = next(p for p in iter(any_port, None) if p < 65535 and free(p + 1))
grpc = next(p for p in iter(any_port, None) if p not in (kafka, kafka + 1))
rest = next(p for p in iter(any_port, None) if p not in (kafka, kafka + 1, grpc))
print(kafka, grpc, rest)
EOF
)
export CHEXSTACK_KAFKA="127.0.0.1:$KAFKA_PORT"
export CHEXSTACK_SERVING="127.0.0.1:$GRPC_PORT"
export CHEXSTACK_SERVING_REST="127.0.0.1:$REST_PORT"
pids=()

cleanup() {
  status=$?
  echo "== stopping workers, serving and Kafka"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  chexstack kafka down --kafka-data-dir "$RUN/kafka" || true
  [ -z "${partial:-}" ] || rm -rf "$partial"
  if [ "$status" -eq 0 ] && [ -z "${CHEXSTACK_DEMO_KEEP:-}" ]; then
    rm -rf "$RUN"
  else
    echo "== logs and data kept in $RUN"
  fi
}
trap cleanup EXIT

echo "== this run: $RUN"
echo "== Kafka (KRaft) on $CHEXSTACK_KAFKA"
chexstack kafka up --kafka-data-dir "$RUN/kafka"

if [ ! -d "$MODEL_BASE/1" ]; then
  echo "== exporting CheXNet (DenseNet-121, random weights) to $MODEL_BASE/1 (once; kept for later runs)"
  # Exported beside the cache and moved in whole: an interrupted export is never taken for a model.
  mkdir -p "$MODEL_BASE"
  partial="$(mktemp -d "$(dirname "$MODEL_BASE")/.export.XXXXXX")"
  chexstack models export --out "$partial" --version 1 --weights random --seed 0
  # -T: never into a version 1 another demo moved in meanwhile (that one is as good).
  mv -T "$partial/1" "$MODEL_BASE/1" 2>/dev/null || true
  rm -rf "$partial"
  partial=""
fi

echo "== chexstack serve: gRPC $CHEXSTACK_SERVING, REST $CHEXSTACK_SERVING_REST"
chexstack serve --model-name chexnet --model-base-path "$MODEL_BASE" --enable-batching \
  >"$RUN/logs/serve.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 180); do
  if curl -fs "http://$CHEXSTACK_SERVING_REST/v1/models/chexnet" 2>/dev/null | grep -q AVAILABLE; then break; fi
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$RUN/logs/serve.log"; exit 1; }
  sleep 1
done
if ! curl -fs "http://$CHEXSTACK_SERVING_REST/v1/models/chexnet"; then
  tail -n 20 "$RUN/logs/serve.log"
  echo "error: serving did not load the model within 180 s (log above, in $RUN/logs/serve.log)" >&2
  exit 1
fi
echo

echo "== workers: preprocess and route"
chexstack preprocess >"$RUN/logs/preprocess.log" 2>&1 &
pids+=($!)
chexstack route >"$RUN/logs/route.log" 2>&1 &
pids+=($!)

echo "== $COUNT synthetic radiographs"
chexstack data synth --out "$RUN/synth" --count "$COUNT" --seed 0
mapfile -t files < <(find "$RUN/synth" -type f \( -name '*.png' -o -name '*.dcm' \) | sort)

echo "== upload"
upload_out="$(chexstack upload "${files[@]}" || true)"
echo "$upload_out"
# mawk (Debian's awk) has no {n} intervals, so grep picks the ids.
mapfile -t ids < <(echo "$upload_out" | cut -f2 | grep -E '^[0-9a-f]{32}$' || true)
if [ "${#ids[@]}" -eq 0 ]; then
  echo "error: no file was uploaded" >&2
  exit 1
fi
args=()
for id in "${ids[@]}"; do args+=(--image-id "$id"); done

echo "== predictions"
chexstack predictions "${args[@]}" --timeout 300
echo
echo "NOTE: this model is untrained (random weights): its findings mean nothing. Train one first (see README)."
