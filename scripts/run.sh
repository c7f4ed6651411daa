#!/usr/bin/env bash
# `make run`: a standalone Home Server on 127.0.0.1 with the sample users; Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p parley-server
cat <<'MSG'

Parley standalone Home Server, SIP domain example.test
  SIP   udp/tcp 127.0.0.1:5060   tls 127.0.0.1:5061 (self-signed: .parley-demo/data/tls/cert.pem)
  HTTP  http://127.0.0.1:8080/healthz  /readyz  /metrics
  Users alice, bob, carol @example.test; passwords alice-password, bob-password, carol-password
  Try:  sipsak -vv -U -x 300 -C sip:alice@127.0.0.1:5070 -s sip:alice@127.0.0.1:5060 -u alice -a alice-password
  More: README.md, "Start here"

MSG
exec target/release/parley-server serve --role home --config examples/standalone/parley.toml
