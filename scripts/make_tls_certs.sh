#!/usr/bin/env bash
# Make a private CA and the certificates of compose.tls.yaml / deploy/kubernetes/components/tls (openssl CLI):
#   DIR/ca.crt, ca.key            the CA (keep ca.key offline; clients trust ca.crt)
#   DIR/gateway.crt, gateway.key  the gateway: names "gateway", localhost, 127.0.0.1 and GATEWAY_NAME...
#   DIR/stages.crt, stages.key    the stage services: names preprocess, stage1, stage2
# Both certificates allow server and client use (the gateway presents its own to the stages; the stages'
# health probes present theirs). EC P-256 keys, valid 825 days.
#
# Usage: scripts/make_tls_certs.sh DIR [GATEWAY_NAME...]     e.g. scripts/make_tls_certs.sh tls api.example.org
# The containers run as uid 10001: make the keys readable to it (e.g. sudo chown 10001 DIR/*.key).
set -euo pipefail
if [ $# -lt 1 ]; then
  sed -n '2,11p' "$0" >&2
  exit 2
fi
dir=$1
shift
mkdir -p "$dir"
cd "$dir"
subject_names() {  # DNS:/IP: list for openssl's subjectAltName
  local out="" name
  for name in "$@"; do
    if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then out+=",IP:$name"; else out+=",DNS:$name"; fi
  done
  echo "${out#,}"
}
issue() {  # issue NAME SUBJECT_NAMES
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -keyout "$1.key" -out "$1.csr" \
    -subj "/CN=$1" 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n' "$2" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 -extfile "$1.ext" \
    -out "$1.crt" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -keyout ca.key -out ca.crt \
  -days 825 -subj /CN=synchuman-ca 2>/dev/null
issue gateway "$(subject_names gateway localhost 127.0.0.1 "$@")"
issue stages "$(subject_names preprocess stage1 stage2)"
echo "wrote $(pwd)/{ca,gateway,stages}.{crt,key}"
