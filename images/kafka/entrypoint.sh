#!/usr/bin/env bash
# Entrypoint of chexstack/kafka: write server.properties, format KRaft storage once, run kafka.Kafka.
# Idempotent across restarts: the cluster id and the formatted storage live in $KAFKA_DATA_DIR (a named
# volume); a restart reuses them (StorageTool --ignore-formatted).
#
# Settings, as in the apache/kafka image: every KAFKA_<NAME> variable becomes the property <name>
# (lower case; `_` -> `.`, `__` -> `_`, `___` -> `-`), e.g. KAFKA_ADVERTISED_LISTENERS ->
# advertised.listeners, and overrides the single-node defaults below. CLUSTER_ID fixes the cluster id
# (else one is generated on first start and kept). KAFKA_HEAP_OPTS, KAFKA_JVM_PERFORMANCE_OPTS and
# KAFKA_OPTS are JVM options, not properties.
# Arguments: none starts the broker; anything else is run instead (e.g. `bash`).
set -euo pipefail

if [ $# -gt 0 ]; then exec "$@"; fi

KAFKA_HOME="${KAFKA_HOME:-/opt/kafka}"
data="${KAFKA_DATA_DIR:-/var/lib/kafka}"
props_file="$data/server.properties"
classpath="$KAFKA_HOME/libs/*"
say() { echo "[chexstack-kafka] $*" >&2; }

mkdir -p "$data" 2>/dev/null || true
[ -w "$data" ] || { say "ERROR: $data is not writable by uid $(id -u); mount a volume owned by it"; exit 1; }

declare -A props=(
  [process.roles]=broker,controller
  [node.id]=1
  [controller.quorum.bootstrap.servers]=localhost:9093
  [listeners]=PLAINTEXT://:9092,CONTROLLER://:9093
  [advertised.listeners]=PLAINTEXT://localhost:9092,CONTROLLER://localhost:9093
  [controller.listener.names]=CONTROLLER
  [listener.security.protocol.map]=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
  [inter.broker.listener.name]=PLAINTEXT
  [log.dirs]="$data/data"
  [offsets.topic.replication.factor]=1
  [offsets.topic.num.partitions]=6
  [transaction.state.log.replication.factor]=1
  [transaction.state.log.min.isr]=1
  [transaction.state.log.num.partitions]=6
  [share.coordinator.state.topic.replication.factor]=1
  [share.coordinator.state.topic.min.isr]=1
  [group.initial.rebalance.delay.ms]=0
  [num.partitions]=6
  [auto.create.topics.enable]=false
  [log.cleaner.backoff.ms]=1000
)

not_properties=" KAFKA_HOME KAFKA_DATA_DIR KAFKA_VERSION KAFKA_HEAP_OPTS KAFKA_OPTS KAFKA_JVM_PERFORMANCE_OPTS \
KAFKA_GC_LOG_OPTS KAFKA_JMX_OPTS KAFKA_LOG4J_OPTS KAFKA_HEALTHCHECK_ADDRESS "
while IFS= read -r var; do
  case "$not_properties" in *" $var "*) continue ;; esac
  name="${var#KAFKA_}"
  name="${name,,}"
  name="${name//___/-}"
  name="${name//__/@}"
  name="${name//_/.}"
  name="${name//@/_}"
  props[$name]="${!var}"
done < <(compgen -e | grep '^KAFKA_' || true)

tmp="$props_file.tmp"
{
  echo "# written by chexstack-kafka at every start; set KAFKA_<NAME> variables to change it"
  for key in "${!props[@]}"; do printf '%s=%s\n' "$key" "${props[$key]}"; done | LC_ALL=C sort
} >"$tmp"
mv "$tmp" "$props_file"

# The cluster id: the formatted storage's own, else CLUSTER_ID, else the one kept from a first start.
logdir="${props[log.dirs]%%,*}"
meta="$logdir/meta.properties"
cluster_file="$data/cluster.id"
formatted=""
[ -f "$meta" ] && formatted="$(sed -n 's/^cluster\.id=//p' "$meta")"
if [ -n "$formatted" ]; then
  if [ -n "${CLUSTER_ID:-}" ] && [ "$CLUSTER_ID" != "$formatted" ]; then
    say "ERROR: CLUSTER_ID=$CLUSTER_ID but $logdir is formatted for cluster $formatted; use a new volume or unset CLUSTER_ID"
    exit 1
  fi
  cluster_id="$formatted"
elif [ -n "${CLUSTER_ID:-}" ]; then
  cluster_id="$CLUSTER_ID"
elif [ -s "$cluster_file" ]; then
  cluster_id="$(cat "$cluster_file")"
else
  cluster_id="$(python3 -c 'import base64, uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')"
fi
echo "$cluster_id" >"$cluster_file"

log4j="-Dlog4j2.configurationFile=$KAFKA_HOME/config/log4j2.yaml"
if [ -z "$formatted" ]; then
  say "formatting KRaft storage in $logdir for cluster $cluster_id"
  # shellcheck disable=SC2086
  java -Xmx256m $log4j -cp "$classpath" kafka.tools.StorageTool format --standalone \
    -t "$cluster_id" -c "$props_file" --ignore-formatted
else
  say "storage in $logdir already formatted for cluster $cluster_id"
fi

say "starting Kafka (listeners ${props[listeners]}; advertised ${props[advertised.listeners]})"
# shellcheck disable=SC2086
exec java ${KAFKA_HEAP_OPTS:--Xmx512m -Xms512m} \
  ${KAFKA_JVM_PERFORMANCE_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true} \
  $log4j ${KAFKA_OPTS:-} -cp "$classpath" kafka.Kafka "$props_file"
