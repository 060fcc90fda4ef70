#!/usr/bin/env bash
# fetch-jars POM OUTDIR [CA_BUNDLE]: copy the runtime dependencies of POM (the Kafka broker) into OUTDIR.
# Runs in the discarded fetch stage of images/kafka/Dockerfile. Java trusts a keystore, not a PEM
# bundle: the certificates of CA_BUNDLE (the host's, a build secret) that Debian's Java store lacks
# are added to a copy of that store in /tmp, used for this Maven run only.
set -euo pipefail
pom="$1" out="$2" ca="${3:-}"
opts=()
if [ -n "$ca" ] && [ -s "$ca" ]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  store="$work/truststore.p12"
  keytool -importkeystore -noprompt -srckeystore /etc/ssl/certs/java/cacerts -srcstorepass changeit \
    -destkeystore "$store" -deststoretype PKCS12 -deststorepass changeit >/dev/null 2>&1
  # Split the host bundle; keep the certificates whose base64 body is not in Debian's bundle.
  awk -v dir="$work" '
    FNR == 1 { file++ }
    /-----BEGIN CERTIFICATE-----/ { body = ""; pem = $0 "\n"; inside = 1; next }
    /-----END CERTIFICATE-----/ {
      pem = pem $0 "\n"; inside = 0
      if (file == 1) { known[body] = 1 }
      else if (!(body in known)) { n++; printf "%s", pem > (dir "/extra-" n ".pem"); close(dir "/extra-" n ".pem") }
      next
    }
    inside { body = body $0; pem = pem $0 "\n" }
  ' /etc/ssl/certs/ca-certificates.crt "$ca"
  n=0
  for pem in "$work"/extra-*.pem; do
    [ -e "$pem" ] || continue
    n=$((n + 1))
    keytool -importcert -noprompt -alias "build-ca-$n" -file "$pem" -keystore "$store" \
      -storetype PKCS12 -storepass changeit >/dev/null
  done
  echo "fetch-jars: $n certificate(s) from the build CA bundle added to Maven's truststore"
  opts=(-Djavax.net.ssl.trustStore="$store" -Djavax.net.ssl.trustStoreType=PKCS12 -Djavax.net.ssl.trustStorePassword=changeit)
fi
mvn -B -q "${opts[@]}" -f "$pom" dependency:copy-dependencies -DoutputDirectory="$out" -DincludeScope=runtime
ls "$out"/kafka_2.13-*.jar >/dev/null
echo "fetch-jars: $(ls "$out" | wc -l) jars in $out"
