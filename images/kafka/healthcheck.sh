#!/usr/bin/env bash
# Healthcheck of chexstack/kafka: send a Kafka ApiVersions (v0) request to the broker's client listener
# with bash's /dev/tcp and expect a reply with our correlation id and error code 0. A SASL listener
# answers ApiVersions before authentication, so no credentials are needed.
# The address is KAFKA_HEALTHCHECK_ADDRESS (host:port), else the first non-controller listener.
set -euo pipefail
addr="${KAFKA_HEALTHCHECK_ADDRESS:-}"
if [ -z "$addr" ]; then
  props="${KAFKA_DATA_DIR:-/var/lib/kafka}/server.properties"
  listeners="$(sed -n 's/^listeners=//p' "$props")"
  IFS=, read -ra entries <<<"$listeners"
  for entry in "${entries[@]}"; do
    case "$entry" in CONTROLLER://*) continue ;; esac
    addr="${entry#*://}"
    break
  done
fi
host="${addr%:*}" port="${addr##*:}"
case "$host" in "" | 0.0.0.0 | "[::]") host=127.0.0.1 ;; esac
exec 3<>"/dev/tcp/$host/$port"
# size=12 | api_key=18 (ApiVersions) | api_version=0 | correlation_id=0x4b484331 | client_id="hc"
printf '\x00\x00\x00\x0c\x00\x12\x00\x00\x4b\x48\x43\x31\x00\x02hc' >&3
reply="$(timeout 5 head -c 10 <&3 | od -An -tx1 | tr -d ' \n')"
exec 3<&-
# 4 bytes size, then correlation id 4b484331, then error code 0000
[ "${reply:8:12}" = "4b4843310000" ] || { echo "unexpected ApiVersions reply from $host:$port: '$reply'" >&2; exit 1; }
echo "kafka answers on $host:$port"
