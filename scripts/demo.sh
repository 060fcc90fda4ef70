#!/usr/bin/env bash
# `make demo`: the whole streaming path on this machine without Docker, then everything stopped.
# broker -> exported CheXNet -> `chexstack serve` -> preprocess + route workers -> synthetic uploads
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export TF_CPP_MIN_LOG_LEVEL=2
DEMO="${CHEXSTACK_DEMO_DIR:-$PWD/var/demo}"
export CHEXSTACK_HOME="$DEMO"
export CHEXSTACK_STORE="$DEMO/blobs"
KAFKA_PORT="${CHEXSTACK_KAFKA_PORT:-9092}"
export CHEXSTACK_KAFKA="127.0.0.1:$KAFKA_PORT"
GRPC_PORT="${CHEXSTACK_PORT:-8500}"
REST_PORT="${CHEXSTACK_REST_API_PORT:-8501}"
export CHEXSTACK_SERVING="127.0.0.1:$GRPC_PORT"
COUNT="${CHEXSTACK_DEMO_COUNT:-8}"
mkdir -p "$DEMO/logs"
pids=()

cleanup() {
  echo "== stopping workers, serving and Kafka"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  chexstack kafka down --kafka-data-dir "$DEMO/kafka" --kafka-port "$KAFKA_PORT" || true
}
trap cleanup EXIT

echo "== Kafka (KRaft) on $CHEXSTACK_KAFKA"
chexstack kafka up --kafka-data-dir "$DEMO/kafka" --kafka-port "$KAFKA_PORT"

if [ ! -d "$DEMO/models/chexnet/1" ]; then
  echo "== exporting CheXNet (DenseNet-121, random weights) to $DEMO/models/chexnet/1"
  chexstack models export --out "$DEMO/models/chexnet" --version 1 --weights random --seed 0
fi

echo "== chexstack serve: gRPC $CHEXSTACK_SERVING, REST 127.0.0.1:$REST_PORT"
chexstack serve --model-name chexnet --model-base-path "$DEMO/models/chexnet" \
  --port "$GRPC_PORT" --rest-api-port "$REST_PORT" --enable-batching >"$DEMO/logs/serve.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 180); do
  if curl -fs "http://127.0.0.1:$REST_PORT/v1/models/chexnet" 2>/dev/null | grep -q AVAILABLE; then break; fi
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$DEMO/logs/serve.log"; exit 1; }
  sleep 1
done
curl -fs "http://127.0.0.1:$REST_PORT/v1/models/chexnet"; echo

echo "== workers: preprocess and route"
chexstack preprocess >"$DEMO/logs/preprocess.log" 2>&1 &
pids+=($!)
chexstack route >"$DEMO/logs/route.log" 2>&1 &
pids+=($!)

echo "== $COUNT synthetic radiographs"
rm -rf "$DEMO/synth"
chexstack data synth --out "$DEMO/synth" --count "$COUNT" --seed 0
mapfile -t files < <(find "$DEMO/synth" -type f \( -name '*.png' -o -name '*.dcm' \) | sort)

echo "== upload"
upload_out="$(chexstack upload "${files[@]}" || true)"
echo "$upload_out"
# mawk (Debian's awk) has no {n} intervals, so grep picks the ids.
mapfile -t ids < <(echo "$upload_out" | cut -f2 | grep -E '^[0-9a-f]{32}$' || true)
args=()
for id in "${ids[@]}"; do args+=(--image-id "$id"); done

echo "== predictions"
chexstack predictions "${args[@]}" --timeout 300
echo
echo "NOTE: this model is untrained (random weights): its findings mean nothing. Train one first (see README)."
