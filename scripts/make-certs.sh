#!/bin/bash
# make-certs.sh: a small private CA and node certificates for the replicator's
# mutual TLS (demo and tests), made with the openssl CLI.
#
#   scripts/make-certs.sh DIR NAME...
#
# Creates DIR/ca.crt and DIR/ca.key unless they exist, then for each NAME that
# has no certificate yet DIR/NAME.crt and DIR/NAME.key: EC P-256, CN=NAME,
# SAN DNS:NAME, DNS:localhost, IP:127.0.0.1, usable as TLS server and client.
# Idempotent: existing files are kept (delete them to renew). Keys are 0600.
set -euo pipefail

usage() {
    echo "usage: $0 DIR NAME..." >&2
    exit 2
}
[[ $# -ge 2 ]] || usage
dir=$1
shift

command -v openssl >/dev/null || { echo "make-certs.sh: openssl not found (apt-get install openssl)" >&2; exit 1; }

for name in "$@"; do
    # The name goes into a config file and a file name: keep it a DNS label list.
    [[ $name =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$ && $name != ca ]] ||
        { echo "make-certs.sh: invalid node name '$name' (letters, digits, '.', '-'; not 'ca')" >&2; exit 2; }
done

mkdir -p "$dir"
umask 077 # keys are born 0600; certificates are chmod'ed 0644 below

ca_days=3650  # the cluster CA outlives its nodes
node_days=825 # about 27 months, the usual upper bound for leaf certificates

if [[ ! -s $dir/ca.crt || ! -s $dir/ca.key ]]; then
    if [[ -e $dir/ca.crt || -e $dir/ca.key ]]; then
        # Half a CA (one file lost): re-creating it would orphan every node
        # certificate signed by the old key.
        echo "make-certs.sh: $dir has only one of ca.crt/ca.key; restore it or remove both" >&2
        exit 1
    fi
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/ca.key.tmp" 2>/dev/null
    openssl req -x509 -new -key "$dir/ca.key.tmp" -sha256 -days "$ca_days" \
        -subj "/CN=icbd-store replication CA" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" \
        -out "$dir/ca.crt.tmp"
    chmod 0600 "$dir/ca.key.tmp"
    chmod 0644 "$dir/ca.crt.tmp"
    mv "$dir/ca.key.tmp" "$dir/ca.key"
    mv "$dir/ca.crt.tmp" "$dir/ca.crt"
    echo "make-certs.sh: created CA $dir/ca.crt"
fi

for name in "$@"; do
    crt=$dir/$name.crt
    key=$dir/$name.key
    if [[ -s $crt && -s $key ]] && openssl verify -CAfile "$dir/ca.crt" "$crt" >/dev/null 2>&1; then
        continue
    fi
    ext=$(mktemp "$dir/.ext.XXXXXX")
    trap 'rm -f "$ext" "$dir/$name".*.tmp' EXIT
    cat >"$ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=DNS:$name,DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
EOF
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$key.tmp" 2>/dev/null
    openssl req -new -key "$key.tmp" -subj "/CN=$name" -out "$dir/$name.csr.tmp"
    openssl x509 -req -in "$dir/$name.csr.tmp" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
        -CAcreateserial -CAserial "$dir/ca.srl" -days "$node_days" -sha256 \
        -extfile "$ext" -out "$crt.tmp" 2>/dev/null
    chmod 0600 "$key.tmp"
    chmod 0644 "$crt.tmp"
    mv "$key.tmp" "$key"
    mv "$crt.tmp" "$crt"
    rm -f "$ext" "$dir/$name.csr.tmp"
    trap - EXIT
    echo "make-certs.sh: created $crt (CN=$name, DNS:$name, DNS:localhost, IP:127.0.0.1)"
done
