#!/usr/bin/env bash
# `make run`: a standalone Home Server on 127.0.0.1 with the sample users; Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/parley-server
if [ ! -x "$bin" ]; then
  echo "run: building parley-server (release). The first build compiles every dependency and takes"
  echo "run: several minutes (about 15 on 2 cores); cargo shows its progress below. Later runs start in seconds."
fi
# Not -q: on a cold machine a silent build looks like a hang.
cargo build --release -p parley-server
# The web client (web/dist): without npm the server runs all the same, and says the page is missing.
if ! scripts/web-build.sh; then
  echo "run: the web client is not built (it needs npm: \`make deps\` installs it); SIP works without it."
fi
if ! command -v sipsak >/dev/null; then
  echo "run: sipsak (used in the examples below) is not installed: \`make deps\` installs it, and baresip."
fi
cat <<'MSG'

Parley standalone Home Server, SIP domain example.test
  SIP   udp/tcp 127.0.0.1:5060   tls 127.0.0.1:5061 (self-signed: .parley-demo/data/tls/cert.pem)
  HTTP  http://127.0.0.1:8080/healthz  /readyz  /metrics
  Web   http://127.0.0.1:8088/  (the web client: sign in as alice, and as bob in a private window)
  WS    ws 127.0.0.1:5066   wss 127.0.0.1:5067 (SIP over WebSocket, subprotocol sip)
  Users alice, bob, carol @example.test; passwords alice-password, bob-password, carol-password
  Try:  sipsak -vv -i -U -x 60 -C sip:alice@127.0.0.1:5070 -s sip:alice@127.0.0.1:5060 -u alice -a alice-password
        (signs alice in for 60 s; -x 0 signs her out)
  More: README.md, "Try it" (baresip, linphonec and what the log shows)
  Log:  one line per sign-in, sign-out and subscription; PARLEY_LOG=debug shows more

MSG
exec "$bin" serve --role home --config examples/standalone/parley.toml
