#!/usr/bin/env bash
# Smoke-check the built images (scripts/images/build.sh first):
#   python:      chexstack --version, TensorFlow/Keras/serving-api/confluent-kafka import, non-root user
#   tensorboard: tensorboard --version, serves on 6006
#   kafka:       a broker in a container answers a Kafka client on a 127.0.0.1 port within 90 s, turns
#                healthy, and keeps its cluster id and topics across a restart (named volume)
#   jupyter:     /api/status answers with the token, refuses without it or with a wrong one
#   CA secret:   no layer of any image holds a certificate of the host bundle that Debian does not ship,
#                and each image's /etc/ssl/certs/ca-certificates.crt is exactly what its own
#                ca-certificates package generates (scripts/images/ca_leak_scan.py)
#   verify.sh [--source bootstrap|pull]      (default: the source of the last build.sh run)
# Prints one line per check and "N passed, N failed"; exits 1 when any check failed.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

source_=""
while [ $# -gt 0 ]; do
  case "$1" in
    --source) source_="$2"; shift 2 ;;
    --source=*) source_="${1#*=}"; shift ;;
    -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
done
if [ -z "$source_" ]; then
  source_="$(sed -n 's/^CHEXSTACK_IMAGE_SOURCE=//p' "$IMAGES_REPO_ROOT/var/images.env" 2>/dev/null || true)"
  source_="${source_:-bootstrap}"
fi
ensure_docker
compute_tags "$source_"

passed=0 failed=0
run_id="chexstack-verify-$$"
work="$(mktemp -d)"
cleanup() {
  docker rm -f "$run_id-kafka" "$run_id-jupyter" "$run_id-tensorboard" >/dev/null 2>&1 || true
  docker volume rm "$run_id-kafka" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
ok() { passed=$((passed + 1)); echo "PASS $*"; }
bad() { failed=$((failed + 1)); echo "FAIL $*"; }
check() { # check NAME COMMAND...: pass when the command succeeds; its output goes to $work/out
  local name="$1"; shift
  if "$@" >"$work/out" 2>&1; then ok "$name"; else bad "$name"; sed 's/^/    /' "$work/out" | tail -n 15; fi
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

images=("$CHEXSTACK_BASE_IMAGE" "$CHEXSTACK_PYTHON_IMAGE" "$CHEXSTACK_TENSORBOARD_IMAGE" "$CHEXSTACK_JUPYTER_IMAGE")
[ "$source_" = bootstrap ] && images+=("$CHEXSTACK_KAFKA_IMAGE")
for image in "${images[@]}"; do
  image_exists "$image" || die "$image is missing: run scripts/images/build.sh --source $source_"
done
echo "verifying the $source_ images"

# --- python / tensorboard ----------------------------------------------------------------------------
want="$(package_version)"
check "python: chexstack --version is $want" \
  bash -c "[ \"\$(docker run --rm '$CHEXSTACK_PYTHON_IMAGE' chexstack --version)\" = '$want' ]"
check "python: import tensorflow, keras, tensorflow_serving, confluent_kafka, pydicom" \
  docker run --rm "$CHEXSTACK_PYTHON_IMAGE" python -c \
  'import tensorflow as tf, keras, confluent_kafka, pydicom; from tensorflow_serving.apis import predict_pb2; print(tf.__version__, keras.__version__)'
check "python: runs as uid 10001 (chexstack)" \
  bash -c "[ \"\$(docker run --rm '$CHEXSTACK_PYTHON_IMAGE' id -u)\" = 10001 ]"
check "tensorboard: tensorboard --version is $TENSORBOARD_VERSION" \
  bash -c "docker run --rm '$CHEXSTACK_TENSORBOARD_IMAGE' tensorboard --version 2>/dev/null | grep -qx '$TENSORBOARD_VERSION'"

tport="$(free_port)"
docker run -d --name "$run_id-tensorboard" -p "127.0.0.1:$tport:6006" "$CHEXSTACK_TENSORBOARD_IMAGE" >/dev/null
check "tensorboard: serves on 6006 within 60 s" python3 - "http://127.0.0.1:$tport/" <<'PY'
import sys, time, urllib.request
deadline = time.monotonic() + 60
while True:
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
            sys.exit(0 if r.status == 200 else 1)
    except OSError as exc:
        if time.monotonic() > deadline:
            sys.exit(f"no answer: {exc}")
        time.sleep(1)
PY
docker rm -f "$run_id-tensorboard" >/dev/null

# --- kafka -------------------------------------------------------------------------------------------
# A Kafka client: the repository's venv when it has confluent_kafka, else the python image on the host
# network.
kafka_client() {
  local py="${CHEXSTACK_VERIFY_PYTHON:-$IMAGES_REPO_ROOT/.venv/bin/python}"
  if [ -x "$py" ] && "$py" -c 'import confluent_kafka' 2>/dev/null; then
    "$py" -c "$1" "${@:2}"
  else
    docker run --rm --network host "$CHEXSTACK_PYTHON_IMAGE" python -c "$1" "${@:2}"
  fi
}
# wait_broker BOOTSTRAP TIMEOUT -> prints the cluster id and topics once the broker answers metadata
wait_broker_py='
import sys, time
from confluent_kafka.admin import AdminClient
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        md = AdminClient({"bootstrap.servers": sys.argv[1]}).list_topics(timeout=3)
        if md.brokers:
            print(md.cluster_id, " ".join(sorted(t for t in md.topics if not t.startswith("__"))))
            sys.exit(0)
    except Exception:
        pass
    time.sleep(0.5)
sys.exit("no broker answered on " + sys.argv[1])
'
create_topic_py='
import sys
from confluent_kafka.admin import AdminClient, NewTopic
a = AdminClient({"bootstrap.servers": sys.argv[1]})
for f in a.create_topics([NewTopic("chexstack.verify", 3, 1)]).values():
    f.result()
'
wait_healthy() { # wait_healthy CONTAINER SECONDS
  local status
  for _ in $(seq 1 "$2"); do
    status="$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$1")"
    [ "$status" = healthy ] && return 0
    [ "$status" = none ] && { echo "no healthcheck in the image"; return 1; }
    sleep 1
  done
  echo "health: $status"; docker inspect -f '{{json .State.Health}}' "$1" | tail -c 600; return 1
}

kport="$(free_port)"
docker volume create "$run_id-kafka" >/dev/null
kafka_env=(
  -e KAFKA_LISTENERS=PLAINTEXT://:9092,HOST://:19092,CONTROLLER://:9093
  -e "KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://kafka:9092,HOST://127.0.0.1:$kport,CONTROLLER://localhost:9093"
  -e KAFKA_LISTENER_SECURITY_PROTOCOL_MAP=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,HOST:PLAINTEXT
)
kafka_data=/var/lib/kafka
if [ "$source_" = pull ]; then   # apache/kafka (uid appuser) owns /var/lib/kafka/data; no defaults once KAFKA_* is set
  kafka_data=/var/lib/kafka/data
  kafka_env+=(-e KAFKA_LOG_DIRS=/var/lib/kafka/data -e KAFKA_NODE_ID=1 -e KAFKA_PROCESS_ROLES=broker,controller
    -e KAFKA_CONTROLLER_QUORUM_VOTERS=1@localhost:9093 -e KAFKA_CONTROLLER_LISTENER_NAMES=CONTROLLER
    -e KAFKA_INTER_BROKER_LISTENER_NAME=PLAINTEXT -e KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR=1)
fi
s=$SECONDS
docker run -d --name "$run_id-kafka" -p "127.0.0.1:$kport:19092" \
  -v "$run_id-kafka:$kafka_data" "${kafka_env[@]}" "$CHEXSTACK_KAFKA_IMAGE" >/dev/null
if kafka_client "$wait_broker_py" "127.0.0.1:$kport" 90 >"$work/kafka1" 2>"$work/kafka1.err"; then
  ok "kafka: broker answers on 127.0.0.1:$kport after $((SECONDS - s)) s (cluster $(cut -d' ' -f1 "$work/kafka1"))"
else
  bad "kafka: broker answers on 127.0.0.1:$kport within 90 s"; tail -n 5 "$work/kafka1.err"; docker logs --tail 30 "$run_id-kafka" 2>&1
fi
check "kafka: create a topic" kafka_client "$create_topic_py" "127.0.0.1:$kport"
if [ "$source_" = bootstrap ]; then
  check "kafka: container turns healthy (ApiVersions healthcheck)" wait_healthy "$run_id-kafka" 90
fi
docker restart -t 30 "$run_id-kafka" >/dev/null
s=$SECONDS
if kafka_client "$wait_broker_py" "127.0.0.1:$kport" 90 >"$work/kafka2" 2>"$work/kafka2.err" \
  && [ "$(cut -d' ' -f1 "$work/kafka1")" = "$(cut -d' ' -f1 "$work/kafka2")" ] \
  && grep -qw chexstack.verify "$work/kafka2"; then
  ok "kafka: restart keeps cluster id and topics (back in $((SECONDS - s)) s)"
else
  bad "kafka: restart keeps cluster id and topics"; cat "$work/kafka1" "$work/kafka2"; docker logs --tail 30 "$run_id-kafka" 2>&1
fi
docker rm -f "$run_id-kafka" >/dev/null

# --- jupyter -----------------------------------------------------------------------------------------
jport="$(free_port)"
token="$(python3 -c 'import secrets; print(secrets.token_hex(24))')"
docker run -d --name "$run_id-jupyter" -p "127.0.0.1:$jport:8888" -e "JUPYTER_TOKEN=$token" \
  "$CHEXSTACK_JUPYTER_IMAGE" >/dev/null
http_code() { python3 - "$@" <<'PY'
import sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1])
if len(sys.argv) > 2:
    req.add_header("Authorization", "token " + sys.argv[2])
try:
    with urllib.request.urlopen(req, timeout=5) as r:
        print(r.status)
except urllib.error.HTTPError as e:
    print(e.code)
except OSError:
    print(0)
PY
}
s=$SECONDS
code=0
while [ $((SECONDS - s)) -lt 90 ]; do
  code="$(http_code "http://127.0.0.1:$jport/api")"
  [ "$code" = 200 ] && break
  sleep 1
done
if [ "$code" = 200 ]; then ok "jupyter: /api answers after $((SECONDS - s)) s"; else
  bad "jupyter: /api answers within 90 s (last HTTP $code)"; docker logs --tail 30 "$run_id-jupyter" 2>&1; fi
for case_ in "the token:$token" "no token:" "wrong token:not-$token"; do
  label="${case_%%:*}" tok="${case_#*:}"
  got="$(if [ -n "$tok" ]; then http_code "http://127.0.0.1:$jport/api/status" "$tok"; else http_code "http://127.0.0.1:$jport/api/status"; fi)"
  want=403; [ "$tok" = "$token" ] && want=200
  if [ "$got" = "$want" ]; then ok "jupyter: /api/status with $label -> $want"; else bad "jupyter: /api/status with $label -> $want (got $got)"; fi
done
check "jupyter: container turns healthy" wait_healthy "$run_id-jupyter" 60
check "jupyter: no token in the image's environment or config" \
  bash -c "! docker image inspect -f '{{json .Config.Env}}' '$CHEXSTACK_JUPYTER_IMAGE' | grep -q JUPYTER_TOKEN"
docker rm -f "$run_id-jupyter" >/dev/null

# --- the CA build secret -----------------------------------------------------------------------------
for image in "${images[@]}"; do
  check "ca: $image keeps Debian's own bundle (regenerated bundle identical, no local CAs)" \
    docker run --rm --user 0 --entrypoint sh "$image" -c '
      set -e
      [ -z "$(ls -A /usr/local/share/ca-certificates)" ] || { echo "local CAs added"; exit 1; }
      cp /etc/ssl/certs/ca-certificates.crt /tmp/shipped.crt
      update-ca-certificates --fresh >/dev/null 2>&1
      cmp /tmp/shipped.crt /etc/ssl/certs/ca-certificates.crt'
done
docker run --rm --entrypoint cat "$CHEXSTACK_BASE_IMAGE" /etc/ssl/certs/ca-certificates.crt >"$work/image-bundle.crt"
s=$SECONDS
if docker save "${images[@]}" | python3 "$(dirname "$0")/ca_leak_scan.py" "$CHEXSTACK_CA_BUNDLE" "$work/image-bundle.crt" \
  >"$work/scan" 2>&1; then
  ok "ca: no host-only certificate in any layer of ${#images[@]} images ($(tail -n 1 "$work/scan" | sed 's/;.*//'), $((SECONDS - s)) s)"
  sed 's/^/    /' "$work/scan"
else
  bad "ca: host CA bundle leaked into an image"; sed 's/^/    /' "$work/scan"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
