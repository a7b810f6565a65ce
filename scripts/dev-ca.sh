#!/usr/bin/env bash
# Makes a development PKI for MemBroker's mutual TLS with openssl. NOT for
# production: keys are unencrypted and the CA key sits next to them.
#
#   scripts/dev-ca.sh OUTDIR [HOST...]      (hosts default: kvm-01 kvm-02 kvm-03)
#
# Writes into OUTDIR (each NAME.pem with its NAME-key.pem):
#   ca.pem               the CA every daemon and client trusts (--tls-ca)
#   broker.pem           the broker (SAN DNS:localhost, IP:127.0.0.1, and
#                        $MEMBROKER_BROKER_NAMES, comma-separated DNS names)
#   host-HOST.pem        one agent per host: CN=HOST, SAN DNS:HOST and
#                        URI:spiffe://membroker/host/HOST, OU=membroker-agent
#   admin.pem            CN=admin, OU=membroker-admin (every AdminService call)
#   read-only.pem        CN=read-only, OU=membroker-read-only (list/get/explain/
#                        watch/history only)
# and, for negative tests:
#   expired.pem          like host-FIRSTHOST.pem but expired yesterday
#   foreign-ca.pem       another CA, and foreign-host.pem / foreign-admin.pem
#                        signed by it (the broker must refuse them)
# The broker's default SecurityConfig maps the two OUs above to the admin
# and read-only roles.
set -euo pipefail

if (($# < 1)) || [[ "$1" == -* ]]; then
  echo "usage: $0 OUTDIR [HOST...]" >&2
  exit 2
fi
out="$1"
shift
hosts=("$@")
if ((${#hosts[@]} == 0)); then hosts=(kvm-01 kvm-02 kvm-03); fi
for h in "${hosts[@]}"; do
  if [[ ! "$h" =~ ^[A-Za-z0-9._-]{1,253}$ ]]; then
    echo "$0: host id \"$h\" must be 1-253 characters of [A-Za-z0-9._-]" >&2
    exit 2
  fi
done
command -v openssl >/dev/null || { echo "$0: openssl is required" >&2; exit 1; }
mkdir -p "$out"
umask 077
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
days=825

key() { openssl ecparam -name prime256v1 -genkey -noout -out "$1" 2>/dev/null; }

# ca NAME CN: a self-signed CA.
ca() {
  key "$out/$1-key.pem"
  openssl req -x509 -new -key "$out/$1-key.pem" -sha256 -days 3650 -subj "/O=MemBroker dev/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$out/$1.pem" 2>/dev/null
}

# leaf NAME CA SUBJECT EXTENSIONS [DAYS]: a certificate signed by CA.
leaf() {
  local name="$1" signer="$2" subject="$3" ext="$4" valid="${5:-$days}"
  key "$out/$name-key.pem"
  openssl req -new -key "$out/$name-key.pem" -subj "$subject" -out "$tmp/$name.csr" 2>/dev/null
  printf '%s\n' "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" "$ext" >"$tmp/$name.ext"
  openssl x509 -req -in "$tmp/$name.csr" -CA "$out/$signer.pem" -CAkey "$out/$signer-key.pem" \
    -CAcreateserial -CAserial "$tmp/$signer.srl" -sha256 -days "$valid" \
    -extfile "$tmp/$name.ext" -out "$out/$name.pem" 2>/dev/null
}

client_ext="extendedKeyUsage=clientAuth"
host_ext() {
  printf '%s\n%s' "$client_ext" "subjectAltName=DNS:$1,URI:spiffe://membroker/host/$1"
}

ca ca "MemBroker dev CA"
broker_san="DNS:localhost,IP:127.0.0.1"
IFS=',' read -r -a extra <<<"${MEMBROKER_BROKER_NAMES:-}"
for n in "${extra[@]}"; do [[ -n "$n" ]] && broker_san+=",DNS:$n"; done
leaf broker ca "/O=MemBroker dev/OU=membroker-broker/CN=membroker" \
  "$(printf '%s\n%s' "extendedKeyUsage=serverAuth" "subjectAltName=$broker_san")"
for h in "${hosts[@]}"; do
  leaf "host-$h" ca "/O=MemBroker dev/OU=membroker-agent/CN=$h" "$(host_ext "$h")"
done
leaf admin ca "/O=MemBroker dev/OU=membroker-admin/CN=admin" "$client_ext"
leaf read-only ca "/O=MemBroker dev/OU=membroker-read-only/CN=read-only" "$client_ext"
# Valid from now until a day ago: expired as soon as it exists.
leaf expired ca "/O=MemBroker dev/OU=membroker-agent/CN=${hosts[0]}" "$(host_ext "${hosts[0]}")" -1

ca foreign-ca "Foreign CA"
leaf foreign-host foreign-ca "/O=Elsewhere/OU=membroker-agent/CN=${hosts[0]}" \
  "$(host_ext "${hosts[0]}")"
leaf foreign-admin foreign-ca "/O=Elsewhere/OU=membroker-admin/CN=admin" "$client_ext"

chmod 0644 "$out"/*.pem
chmod 0600 "$out"/*-key.pem
echo "dev certificates in $out (CA: $out/ca.pem; hosts: ${hosts[*]})"
