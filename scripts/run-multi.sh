#!/usr/bin/env bash
# `make run-multi`: the multi-server configuration on 127.0.0.1: one Front-End (the clients' entry
# point, on make run's ports) in front of two Home Servers, talking mutual TLS with certificates
# from a demo CA this script makes once in .parley-demo-multi/. Ctrl-C stops all three.
# PARLEY_BIN runs another build of parley-server (e.g. target/debug/parley-server) without building.
set -euo pipefail
cd "$(dirname "$0")/.."
state=.parley-demo-multi
bin=${PARLEY_BIN:-}
if [ -z "$bin" ]; then
  bin=target/release/parley-server
  if [ ! -x "$bin" ]; then
    echo "run-multi: building parley-server (release). The first build compiles every dependency and takes"
    echo "run-multi: several minutes (about 15 on 2 cores); cargo shows its progress below."
  fi
  cargo build --release -p parley-server
fi
command -v openssl >/dev/null || { echo "run-multi: openssl is needed to make the demo CA (apt-get install openssl)" >&2; exit 1; }

mkdir -p "$state"
if [ ! -s "$state/ca.crt" ]; then
  echo "run-multi: making a demo CA and certificates in $state/"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 -subj "/CN=Parley demo CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$state/ca.key" -out "$state/ca.crt" 2>/dev/null
  for name in frontend home-1 home-2; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
      -keyout "$state/$name.key" -out "$state/$name.csr" 2>/dev/null
    # serverAuth and clientAuth: the same certificate serves and dials on the internal link.
    openssl x509 -req -in "$state/$name.csr" -CA "$state/ca.crt" -CAkey "$state/ca.key" -CAcreateserial \
      -days 825 -out "$state/$name.crt" -extfile <(printf '%s\n' \
        "subjectAltName=DNS:localhost,DNS:example.test,IP:127.0.0.1" \
        "extendedKeyUsage=serverAuth,clientAuth" "basicConstraints=CA:FALSE") 2>/dev/null
    rm -f "$state/$name.csr"
  done
fi

# Waits until a server's /readyz answers 200 (20 s at most).
wait_ready() {
  local port=$1 name=$2 deadline=$((SECONDS + 20))
  while ((SECONDS < deadline)); do
    if { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null; then
      printf 'GET /readyz HTTP/1.0\r\n\r\n' >&3
      if head -n1 <&3 | grep -q ' 200 '; then exec 3>&-; return 0; fi
      exec 3>&-
    fi
    sleep 0.1
  done
  echo "run-multi: $name did not become ready; see $state/$name.log" >&2
  return 1
}

pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null' EXIT
for name in home-1 home-2; do
  "$bin" serve --role home --config "examples/multi/$name.toml" 2>"$state/$name.log" &
  pids+=($!)
done
wait_ready 8081 home-1
wait_ready 8082 home-2
cat <<'MSG'

Parley multi-server demo, SIP domain example.test
  Front-End    udp/tcp 127.0.0.1:5060   tls 127.0.0.1:5061 (CA: .parley-demo-multi/ca.crt)   ops :8080
  Home Servers home-1 (alice)  internal 127.0.0.1:5072, ops :8081   log .parley-demo-multi/home-1.log
               home-2 (bob, carol)  internal 127.0.0.1:5082, ops :8082   log .parley-demo-multi/home-2.log
  Users        alice, bob, carol @example.test; passwords alice-password, bob-password, carol-password
  Try:  sipsak -vv -i -U -x 60 -C sip:alice@127.0.0.1:5070 -s sip:alice@127.0.0.1:5060 -u alice -a alice-password
        (alice signs in through the Front-End and lands on home-1; a MESSAGE to bob goes on to home-2)
  Front-End log below; Ctrl-C stops all three.

MSG
"$bin" serve --role frontend --config examples/multi/frontend.toml &
pids+=($!)
wait "${pids[-1]}"
