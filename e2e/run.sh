#!/usr/bin/env bash
# End-to-end suite (`make e2e`): a kind cluster, the images built and loaded, the controller
# scenarios run against the cluster's real API server, the chart installed, a domain applied and
# its servers ready; then the SIP check (e2e/sip-check.sh) when the server side provides one.
#
# Needs Docker, kind, kubectl, Helm (make deps puts kubectl and Helm in .tools/bin), openssl, cargo.
# PARLEY_E2E_KEEP=1 keeps the cluster afterwards; PARLEY_E2E_CLUSTER names it.
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$PWD
export PATH="$repo/.tools/bin:$PATH"

cluster=${PARLEY_E2E_CLUSTER:-parley-e2e}
registry=${REGISTRY:-parley.local}
tag=${TAG:-e2e}
keep=${PARLEY_E2E_KEEP:-0}
system_ns=parley-system
demo_ns=parley-demo

log() { printf '\n==> %s\n' "$*"; }
die() {
  echo "e2e: $*" >&2
  exit 1
}
for tool in docker kind kubectl helm openssl cargo; do
  command -v "$tool" >/dev/null 2>&1 || die "needs $tool on PATH"
done

work=$(mktemp -d)
export KUBECONFIG="$work/kubeconfig"
cleanup() {
  local status=$?
  if [[ $status -ne 0 ]] && kubectl version >/dev/null 2>&1; then
    echo "e2e: failed; state of the cluster:" >&2
    kubectl get communicationsdomains,homeservers,frontends,statefulsets,deployments,pods -A -o wide >&2 || true
    kubectl -n "$system_ns" logs deploy/parley-operator --tail=100 >&2 || true
    kubectl -n "$demo_ns" get events --sort-by=.lastTimestamp >&2 || true
  fi
  if [[ $keep == 1 ]]; then
    echo "e2e: kept cluster $cluster (kind delete cluster --name $cluster); KUBECONFIG=$KUBECONFIG"
  else
    kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT

log "kind cluster $cluster"
kind create cluster --name "$cluster" --config e2e/kind.yaml --kubeconfig "$KUBECONFIG" --wait 180s

log "images $registry/parley-{server,operator}:$tag"
make --no-print-directory images REGISTRY="$registry" TAG="$tag"
kind load docker-image --name "$cluster" "$registry/parley-server:$tag" "$registry/parley-operator:$tag"

log "controller scenarios against the cluster (in-process operators, one namespace each)"
cargo test -p parley-operator --test controllers cluster:: -- --test-threads=2

log "helm install the operator into $system_ns, watching $demo_ns"
kubectl create namespace "$system_ns"
kubectl create namespace "$demo_ns"
helm install parley-operator charts/parley-operator \
  --namespace "$system_ns" \
  --set image.repository="$registry/parley-operator" --set image.tag="$tag" \
  --set serverImage.repository="$registry/parley-server" --set serverImage.tag="$tag" \
  --set watchNamespace="$demo_ns" \
  --wait --timeout 5m
kubectl -n "$system_ns" rollout status deployment/parley-operator --timeout=180s
holder=""
for _ in $(seq 60); do
  holder=$(kubectl -n "$system_ns" get lease parley-operator -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true)
  [[ -n $holder ]] && break
  sleep 2
done
[[ -n $holder ]] || die "no operator replica took the leader Lease"
kubectl -n "$system_ns" get pod "$holder" >/dev/null || die "the Lease holder $holder is not an operator pod"
echo "leader: $holder"

log "certificates for the demo servers (a throwaway CA)"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=parley-e2e-ca" \
  -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
for server in corp-home-1 corp-home-2 corp-frontend; do
  san="DNS:$server,DNS:$server.$demo_ns.svc,DNS:$server.$demo_ns.svc.cluster.local,DNS:*.$server.$demo_ns.svc.cluster.local,DNS:example.test,DNS:localhost,IP:127.0.0.1"
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$server" -keyout "$work/$server.key" -out "$work/$server.csr" 2>/dev/null
  openssl x509 -req -in "$work/$server.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial -days 2 \
    -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$san") \
    -out "$work/$server.crt" 2>/dev/null
  kubectl -n "$demo_ns" create secret tls "$server-tls" --cert="$work/$server.crt" --key="$work/$server.key"
done

log "the demo domain"
kubectl apply -f e2e/demo/domain.yaml
# A kind node is small: ask less than the small tier's 1 CPU per server. Fields the operator
# does not own (overrides on its HomeServers and FrontEnd) stay as set.
for hs in corp-home-1 corp-home-2; do
  kubectl -n "$demo_ns" wait --for=create "homeserver/$hs" --timeout=60s
  kubectl -n "$demo_ns" patch homeserver "$hs" --type merge \
    -p '{"spec":{"resources":{"requests":{"cpu":"100m","memory":"128Mi"}}}}'
done
kubectl -n "$demo_ns" wait --for=create frontend/corp-frontend --timeout=60s
kubectl -n "$demo_ns" patch frontend corp-frontend --type merge \
  -p '{"spec":{"resources":{"requests":{"cpu":"100m","memory":"128Mi"}}}}'
kubectl -n "$demo_ns" patch service corp-frontend --type json \
  -p '[{"op":"replace","path":"/spec/ports/2/nodePort","value":30061}]'
kubectl -n "$demo_ns" wait --for=condition=Ready communicationsdomain/corp --timeout=300s
kubectl -n "$demo_ns" get communicationsdomains,homeservers,frontends

if [[ -x e2e/sip-check.sh ]]; then
  log "SIP through the Front-End over TLS"
  PARLEY_E2E_CA="$work/ca.crt" PARLEY_E2E_SIP_TLS="127.0.0.1:30061" e2e/sip-check.sh
else
  log "SIP check skipped: e2e/sip-check.sh is not written yet (it comes with the Front-End)"
fi

log "e2e passed"
