#!/bin/sh
# The certificate of the loopback Postfix listener (deploy/postfix/main.cf): self-signed for
# 127.0.0.1, so the gateway can verify it with [smtp] cafile pointing at the same file.
# Nothing outside this host ever sees it. Usage: make-loopback-cert.sh [DIR] (default
# /etc/postfix/tls). Renew before it expires (825 days): run again, `postfix reload`.
set -eu
dir="${1:-/etc/postfix/tls}"
umask 077
mkdir -p "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 825 \
    -subj "/CN=securemail loopback relay" -addext "subjectAltName=IP:127.0.0.1" \
    -keyout "$dir/loopback.key" -out "$dir/loopback.crt" 2>/dev/null
# The key stays private to root (Postfix reads it before dropping privileges); the
# certificate is public: the gateway's user must read it.
chmod 0600 "$dir/loopback.key"
chmod 0644 "$dir/loopback.crt"
chmod 0755 "$dir"
echo "wrote $dir/loopback.crt and $dir/loopback.key"
