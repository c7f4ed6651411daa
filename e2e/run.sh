#!/usr/bin/env bash
# End-to-end suite (`make e2e`) against a real cluster: the images built and loaded, the chart
# installed (`helm install --wait`), a small CommunicationsDomain applied and Ready, real SIP from
# this host to its Home Server through the client Service (OPTIONS over UDP, TCP and TLS, a
# REGISTER with digest authentication, then `parley-server probe` over TLS trusting only the CA the
# operator made: two users sign in, watch, publish and message), then the domain deleted and
# everything it owned gone.
#
# Which cluster:
# - KUBECONFIG of the one-node cluster from ../shared/k8s/node (its WORKDIR/kubeconfig, or
#   PARLEY_E2E_NODE=WORKDIR): images from the host's binaries (e2e/images.sh, no Docker), or
#   with PARLEY_E2E_IMAGES=docker the Dockerfile's images that `make image-test` saved, loaded
#   into the node's containerd. .ci/run does the latter.
# - KUBECONFIG of a kind cluster (context kind-*): `make images` (Docker) and `kind load`.
# - no KUBECONFIG: a kind cluster is created (needs Docker and kind) and deleted afterwards.
#   The kind paths are kept from the first version of this suite and have not run on CI machines.
#
# Needs kubectl, helm (make deps puts both in .tools/bin), openssl, sipsak.
# PARLEY_E2E_KEEP=1 keeps what was installed (and a created kind cluster) for a look.
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$PWD
node_kubectl=""
if [[ -n ${KUBECONFIG:-} && -x $(dirname "$KUBECONFIG")/bin/kubectl ]]; then
  # The one-node cluster's own kubectl (same version as its API server) goes first.
  node_kubectl=$(cd "$(dirname "$KUBECONFIG")/bin" && pwd)
fi
export PATH="${node_kubectl:+$node_kubectl:}$repo/.tools/bin:$PATH"

tag=${TAG:-e2e}
keep=${PARLEY_E2E_KEEP:-0}
system_ns=${PARLEY_E2E_SYSTEM_NAMESPACE:-parley-e2e-system}
ns=${PARLEY_E2E_NAMESPACE:-parley-e2e}
domain=corp
hs=corp-home-1
timeout=${PARLEY_E2E_TIMEOUT:-180s}

started=$SECONDS
step_started=$SECONDS
step_name=""
timings=()
step() {
  if [[ -n $step_name ]]; then
    timings+=("$(printf '%4ds  %s' $((SECONDS - step_started)) "$step_name")")
  fi
  step_name=$1
  step_started=$SECONDS
  [[ -z $1 ]] || printf '\n==> %s\n' "$1"
}
die() {
  echo "e2e: FAILED: $*" >&2
  exit 1
}
for tool in kubectl helm openssl sipsak curl; do
  command -v "$tool" >/dev/null 2>&1 || die "needs $tool on PATH (make deps installs helm, kubectl and sipsak)"
done

work=$(mktemp -d "${TMPDIR:-/tmp}/parley-e2e.XXXXXX")
# The host's parley-server (for the probe from outside), where cargo builds (CARGO_TARGET_DIR or target/).
parley=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/debug/parley-server
mode=""
kind_cluster=""
created_kind=0
node=${PARLEY_E2E_NODE:-}
if [[ -z ${KUBECONFIG:-} ]]; then
  mode=kind
  kind_cluster=${PARLEY_E2E_CLUSTER:-parley-e2e}
  for tool in docker kind; do
    command -v "$tool" >/dev/null 2>&1 \
      || die "KUBECONFIG is not set, so this would create a kind cluster, which needs $tool on PATH; or bring up the one-node cluster (bash ../shared/k8s/node/up.sh DIR) and export its KUBECONFIG"
  done
  export KUBECONFIG="$work/kubeconfig"
elif [[ -n $node || -f $(dirname "$KUBECONFIG")/cluster.env ]]; then
  mode=node
  node=${node:-$(dirname "$KUBECONFIG")}
elif [[ $(kubectl config current-context 2>/dev/null) == kind-* ]]; then
  mode=kind
  kind_cluster=$(kubectl config current-context)
  kind_cluster=${kind_cluster#kind-}
else
  die "KUBECONFIG names a cluster this suite cannot load images into: use the one-node cluster of ../shared/k8s/node (or set PARLEY_E2E_NODE to its WORKDIR) or a kind cluster"
fi

if [[ $mode == node ]]; then
  operator_repo=local/parley-operator
  server_repo=local/parley-server
  pull_policy=Never
else
  registry=${REGISTRY:-parley.local}
  operator_repo=$registry/parley-operator
  server_repo=$registry/parley-server
  pull_policy=IfNotPresent
fi

state() {
  kubectl get communicationsdomains,homeservers,frontends,statefulsets,deployments,services,pods,pvc -A -o wide || true
  for n in "$ns" "$system_ns"; do
    echo "--- events in $n"
    kubectl -n "$n" get events --sort-by=.lastTimestamp 2>/dev/null | tail -n 40 || true
  done
  echo "--- operator log"
  kubectl -n "$system_ns" logs deploy/parley-operator --tail=60 2>/dev/null || true
  echo "--- Home Server log"
  kubectl -n "$ns" logs "$hs-0" --tail=60 2>/dev/null || true
  echo "--- managed directory log"
  kubectl -n "$ns" logs dir-directory-0 --tail=40 2>/dev/null || true
}

cleanup() {
  local status=$?
  set +e
  if [[ $status -ne 0 ]]; then
    echo "e2e: failed in step: $step_name; state of the cluster:" >&2
    state >&2
  fi
  if [[ $keep == 1 ]]; then
    echo "e2e: kept namespaces $system_ns and $ns (PARLEY_E2E_KEEP=1); KUBECONFIG=$KUBECONFIG"
  elif [[ $created_kind == 1 ]]; then
    kind delete cluster --name "$kind_cluster" >/dev/null 2>&1
  else
    helm uninstall parley-operator -n "$system_ns" >/dev/null 2>&1
    kubectl delete namespace "$ns" "$system_ns" --ignore-not-found --wait=false >/dev/null 2>&1
  fi
  [[ $keep == 1 ]] || rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT

if [[ $mode == kind ]] && ! kind get clusters 2>/dev/null | grep -qx "$kind_cluster"; then
  step "kind cluster $kind_cluster"
  created_kind=1
  kind create cluster --name "$kind_cluster" --config e2e/kind.yaml --kubeconfig "$KUBECONFIG" --wait 180s
fi
kubectl get --raw /readyz >/dev/null || die "the API server in KUBECONFIG ($KUBECONFIG) does not answer /readyz"

step "images $server_repo:$tag and $operator_repo:$tag"
if [[ $mode == node ]]; then
  e2e/images.sh "$work/images" "$node"
else
  make --no-print-directory images REGISTRY="$registry" TAG="$tag"
  kind load docker-image --name "$kind_cluster" "$server_repo:$tag" "$operator_repo:$tag" "$registry/parley-directory:$tag"
fi

step "helm install the operator into $system_ns"
# The domain's namespace is the suite's own: what an earlier (kept or interrupted) run left there
# goes first, so that every object is this run's.
if kubectl get namespace "$ns" >/dev/null 2>&1; then
  echo "deleting namespace $ns, left from an earlier run"
  kubectl delete namespace "$ns" --wait=false >/dev/null
  kubectl wait --for=delete "namespace/$ns" --timeout="$timeout" || die "namespace $ns is still terminating after $timeout"
fi
if [[ $(kubectl get namespace "$system_ns" -o jsonpath='{.status.phase}' 2>/dev/null) == Terminating ]]; then
  kubectl wait --for=delete "namespace/$system_ns" --timeout="$timeout" || die "namespace $system_ns is still terminating"
fi
# Both namespaces enforce the restricted Pod Security Standard: the API server refuses any pod of
# the suite (the operator's, the domain's servers and directory, prep and probe Jobs) that breaks it.
for n in "$ns" "$system_ns"; do
  kubectl create namespace "$n" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  kubectl label namespace "$n" pod-security.kubernetes.io/enforce=restricted --overwrite >/dev/null
done
helm upgrade --install parley-operator charts/parley-operator \
  --namespace "$system_ns" --create-namespace \
  --set image.repository="$operator_repo" --set image.tag="$tag" --set image.pullPolicy="$pull_policy" \
  --set serverImage.repository="$server_repo" --set serverImage.tag="$tag" \
  --set directoryImage.repository="${server_repo%-server}-directory" --set directoryImage.tag="$tag" \
  --wait --timeout "$timeout"
# /readyz of the operator answers once its CRDs are established; --wait waited for it.
kubectl -n "$system_ns" wait --for=condition=Available deployment/parley-operator --timeout="$timeout"

step "CommunicationsDomain $domain Ready"
kubectl -n "$ns" apply -f e2e/domain.yaml
# Nothing here waits on directory-prep conditions: a file directory needs no preparation. Should
# the operator hold workloads back until DomainPrepared for file directories too, Ready says so.
kubectl -n "$ns" wait --for=condition=Ready "communicationsdomain/$domain" --timeout="$timeout" \
  || die "CommunicationsDomain $domain did not become Ready within $timeout: $(kubectl -n "$ns" get communicationsdomain "$domain" -o jsonpath='{.status.conditions}')"
kubectl -n "$ns" wait --for=condition=Ready "pod/$hs-0" --timeout=30s
kubectl -n "$ns" get communicationsdomains,homeservers,statefulsets,pods,services,pvc
# The operator made the domain's CA and the server's certificate: clients trust that CA only.
kubectl -n "$ns" get secret "$domain-ca" -o jsonpath='{.data.ca\.crt}' | base64 -d >"$work/ca.crt"
grep -q 'BEGIN CERTIFICATE' "$work/ca.crt" || die "the domain's CA Secret $domain-ca holds no ca.crt"

step "steady state: the operator rewrites nothing"
# A reconcile that finds the live object as it wants it writes nothing. On the real API server a
# field it leaves out (a false default) made every reconcile rewrite the Service and StatefulSet.
updated=$(kubectl -n "$ns" get events --field-selector "involvedObject.kind=HomeServer,involvedObject.name=$hs,reason=Updated" -o name | wc -l)
[[ $updated -eq 0 ]] || die "the operator updated objects of HomeServer $hs $updated times though nothing changed: $(kubectl -n "$ns" get events --field-selector "involvedObject.name=$hs,reason=Updated")"

step "SIP from the host through Service $hs-sip"
svc_type=$(kubectl -n "$ns" get service "$hs-sip" -o jsonpath='{.spec.type}')
[[ $svc_type == NodePort ]] || die "Service $hs-sip is $svc_type, not the NodePort the domain asks for"
if [[ $mode == node ]]; then
  node_port() { kubectl -n "$ns" get service "$hs-sip" -o jsonpath="{.spec.ports[?(@.name==\"$1\")].nodePort}"; }
  sip_host=127.0.0.1
  udp_port=$(node_port sip-udp)
  tcp_port=$(node_port sip-tcp)
  tls_port=$(node_port sip-tls)
else
  # kind reaches node ports only through the port mappings of e2e/kind.yaml: pin them.
  kubectl -n "$ns" patch service "$hs-sip" --type json -p '[
    {"op":"replace","path":"/spec/ports/0/nodePort","value":30060},
    {"op":"replace","path":"/spec/ports/1/nodePort","value":30060},
    {"op":"replace","path":"/spec/ports/2/nodePort","value":30061}]'
  sip_host=127.0.0.1 udp_port=30060 tcp_port=30060 tls_port=30061
fi
[[ -n $udp_port && -n $tcp_port && -n $tls_port ]] || die "Service $hs-sip lacks a sip-udp, sip-tcp or sip-tls node port"
echo "UDP $sip_host:$udp_port, TCP $sip_host:$tcp_port, TLS $sip_host:$tls_port"

sipsak_ok() {
  local what=$1 out
  shift
  if ! out=$(timeout 20 sipsak -vv "$@" 2>&1) || ! grep -q '^SIP/2.0 200 OK' <<<"$out"; then
    echo "$out" >&2
    die "$what: no 200 OK (sipsak $*)"
  fi
  echo "ok: $what"
}
# sipsak resolves the host of -s, which must therefore be the node's address, not example.test.
sipsak_ok "OPTIONS over UDP" -s "sip:alice@$sip_host:$udp_port"
sipsak_ok "OPTIONS over TCP" -E tcp -s "sip:alice@$sip_host:$tcp_port"
# sipsak checks the certificate's name against "host:port" (its bug), so openssl verifies it.
sipsak_ok "OPTIONS over TLS" -E tls --tls-ignore-cert-failure -s "sip:alice@$sip_host:$tls_port"
openssl s_client -connect "$sip_host:$tls_port" -CAfile "$work/ca.crt" -verify_return_error \
  -verify_hostname "$hs-sip.$ns.svc.cluster.local" </dev/null >"$work/s_client.out" 2>&1 \
  || die "TLS on $sip_host:$tls_port does not present a certificate for $hs-sip.$ns.svc.cluster.local from the domain's CA: $(tail -n 5 "$work/s_client.out")"
echo "ok: TLS certificate of $hs-sip.$ns.svc.cluster.local verified against the domain's CA"
if [[ $mode == node ]]; then
  # Browsers: the web client's settings and SIP over secure WebSocket through the same Service.
  web_port=$(node_port web)
  wss_port=$(node_port sip-wss)
  config=$(curl -sf "http://$sip_host:$web_port/config.json") || die "no web client settings on $sip_host:$web_port"
  grep -q '"domain":"example.test"' <<<"$config" || die "the web client's settings name another domain: $config"
  upgrade=$(curl -sk --http1.1 -m 5 -o /dev/null -w '%{http_code}' -H 'Connection: Upgrade' -H 'Upgrade: websocket' \
    -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' -H 'Sec-WebSocket-Protocol: sip' \
    "https://$sip_host:$wss_port/" || true)
  [[ $upgrade == 101 ]] || die "SIP over WebSocket on $sip_host:$wss_port answered $upgrade to the upgrade, not 101"
  echo "ok: the web client's settings on port $web_port and a SIP WebSocket (subprotocol sip) on $wss_port"
fi

register() {
  printf 'REGISTER sip:example.test SIP/2.0\nFrom: <sip:%s@example.test>;tag=e2e%s\nTo: <sip:%s@example.test>\nCall-ID: parley-e2e-%s-%s\nCSeq: 1 REGISTER\nContact: <sip:%s@%s:5999>\nExpires: %s\nMax-Forwards: 70\nContent-Length: 0\n\n' \
    "$1" "$RANDOM" "$1" "$1" "$RANDOM" "$1" "$sip_host" "$2" >"$work/register-$1.sip"
  echo "$work/register-$1.sip"
}
# sipsak answers the 401 challenge itself (-u, -a).
sipsak_ok "REGISTER alice with digest over UDP" -f "$(register alice 60)" -s "sip:$sip_host:$udp_port" -u alice -a alice-password
if timeout 20 sipsak -vv -f "$(register bob 60)" -s "sip:$sip_host:$udp_port" -u bob -a not-bobs-password >"$work/wrong.out" 2>&1; then
  die "REGISTER with a wrong password succeeded: $(cat "$work/wrong.out")"
fi
echo "ok: REGISTER with a wrong password refused"
sipsak_ok "REGISTER alice removed (Expires: 0)" -f "$(register alice 0)" -s "sip:$sip_host:$udp_port" -u alice -a alice-password
# Two users over TLS, trusting only the domain's CA and checking the Service's name: sign in, watch,
# publish, message, sign out (parley-server probe; over a connection the server answers along it).
printf 'alice-password\n' >"$work/alice.pw"
printf 'bob-password\n' >"$work/bob.pw"
"$parley" probe --server "$sip_host:$tls_port" --ca "$work/ca.crt" \
  --server-name "$hs-sip.$ns.svc.cluster.local" --user alice@example.test --password-file "$work/alice.pw" \
  --peer bob@example.test --peer-password-file "$work/bob.pw" || die "parley-server probe through $hs-sip failed"

step "in-cluster probe: a Job signs two users in through the Service's DNS name"
# What a client inside the cluster sees: cluster DNS, the Service, the certificate's name, the CA
# from the domain's Secret (mounted, not copied). The same probe, as a Job with the server image.
kubectl -n "$ns" create secret generic probe-passwords --from-file=alice="$work/alice.pw" \
  --from-file=bob="$work/bob.pw" --dry-run=client -o yaml | kubectl -n "$ns" apply -f - >/dev/null
kubectl -n "$ns" delete job probe --ignore-not-found >/dev/null
kubectl -n "$ns" apply -f - <<YAML
apiVersion: batch/v1
kind: Job
metadata:
  name: probe
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      automountServiceAccountToken: false
      securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}
      containers:
        - name: probe
          image: $server_repo:$tag
          imagePullPolicy: $pull_policy
          command: [/usr/local/bin/parley-server, probe, --server, "$hs-sip:5061", --ca, /probe/ca/ca.crt,
                    --server-name, "$hs-sip.$ns.svc.cluster.local", --user, alice@example.test,
                    --password-file, /probe/passwords/alice, --peer, bob@example.test,
                    --peer-password-file, /probe/passwords/bob]
          securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
          volumeMounts:
            - {name: ca, mountPath: /probe/ca, readOnly: true}
            - {name: passwords, mountPath: /probe/passwords, readOnly: true}
      volumes:
        - name: ca
          secret: {secretName: $domain-ca, items: [{key: ca.crt, path: ca.crt}]}
        - name: passwords
          secret: {secretName: probe-passwords}
YAML
# Succeeded or failed, whichever comes first (a failed Job never becomes Complete).
deadline=$((SECONDS + 120))
until [[ -n $(kubectl -n "$ns" get job probe -o jsonpath='{.status.succeeded}{.status.failed}') ]]; do
  ((SECONDS < deadline)) || die "the in-cluster probe did not finish: $(kubectl -n "$ns" describe job probe | tail -n 5)"
  sleep 0.5
done
if [[ $(kubectl -n "$ns" get job probe -o jsonpath='{.status.succeeded}') != 1 ]]; then
  kubectl -n "$ns" logs job/probe >&2 || true
  die "the in-cluster probe failed"
fi
kubectl -n "$ns" logs job/probe
kubectl -n "$ns" delete job probe --wait=false >/dev/null
kubectl -n "$ns" delete secret probe-passwords >/dev/null

if [[ $mode == node ]]; then
  step "the server wrote both volumes as uid 65532"
  # The node's volumes are host directories (WORKDIR/pv/...), so the files show who wrote them: the
  # store on the data volume and the log file on the logs volume, as the non-root user (the pod spec's
  # fsGroup is what makes a cloud disk's root-owned volume writable; build's unit tests check it).
  for volume in data:parley.redb logs:parley.log; do
    claim=${volume%%:*}-$hs-0
    pv=$(kubectl -n "$ns" get pvc "$claim" -o jsonpath='{.spec.volumeName}')
    dir=$(kubectl get pv "$pv" -o jsonpath='{.spec.hostPath.path}')
    file=$dir/${volume#*:}
    [[ -n $dir && -s $file ]] || die "the Home Server wrote no ${volume#*:} on its volume $claim ($file)"
    owner=$(stat -c %u:%g "$file")
    [[ $owner == 65532:65532 ]] || die "$file on volume $claim belongs to $owner, not the server's 65532:65532"
    echo "ok: $claim holds ${volume#*:}, owned by $owner"
  done
fi

step "delete CommunicationsDomain $domain: everything it owned goes"
kubectl -n "$ns" delete communicationsdomain "$domain" --timeout="$timeout"
# The garbage collector deletes the children. On a cluster whose CRDs were installed moments ago it
# may take up to ~30 s more: it picks up new resource types on its periodic discovery.
kubectl -n "$ns" wait --for=delete "homeserver/$hs" "statefulset/$hs" "service/$hs" "service/$hs-sip" \
  "configmap/$hs-config" "poddisruptionbudget/$hs" "pod/$hs-0" --timeout="$timeout" \
  || die "objects of CommunicationsDomain $domain are still there after $timeout"
left=$(kubectl -n "$ns" get statefulsets,deployments,services,configmaps,secrets,poddisruptionbudgets,pods,jobs,homeservers,frontends \
  -l "parley.dev/domain=$domain" -o name)
[[ -z $left ]] || die "left behind after deleting CommunicationsDomain $domain: $left"
# The Home Server's volumes are kept on purpose (persistentVolumeClaimRetentionPolicy Retain: users'
# state outlives the HomeServer resource); delete them here so their volumes go too.
kubectl -n "$ns" delete pvc "data-$hs-0" "logs-$hs-0" --timeout="$timeout"
echo "ok: nothing of $domain is left (its volume claims were kept until deleted)"

step "managed directory: a domain with directory: {managed: {}} (e2e/managed.yaml)"
# The operator runs OpenLDAP for the domain (local/parley-directory, built from this host's slapd),
# the four prep Jobs prepare it, a Job adds two users with `parley-server user add` as the
# directory's administrator, and they sign in and exchange a MESSAGE through the Home Server.
mdomain=dir
mhs="dir-home-1"
kubectl -n "$ns" apply -f e2e/managed.yaml
kubectl -n "$ns" wait --for=condition=DirectoryReady "communicationsdomain/$mdomain" --timeout="$timeout" \
  || die "the managed directory did not become ready: $(kubectl -n "$ns" get communicationsdomain "$mdomain" -o jsonpath='{.status.conditions}'); $(kubectl -n "$ns" logs "$mdomain-directory-0" --tail=30 2>&1)"
kubectl -n "$ns" wait --for=condition=DomainPrepared "communicationsdomain/$mdomain" --timeout="$timeout" \
  || die "the managed directory was not prepared: $(kubectl -n "$ns" get communicationsdomain "$mdomain" -o jsonpath='{.status.conditions}')"
for step in schema enterprise domain domainadd-1; do
  [[ $(kubectl -n "$ns" get job "$mdomain-prep-$step" -o jsonpath='{.status.succeeded}') == 1 ]] \
    || die "prep Job $mdomain-prep-$step did not succeed"
  echo "ok: Job $mdomain-prep-$step succeeded: $(kubectl -n "$ns" logs "job/$mdomain-prep-$step" 2>/dev/null | tail -n 1)"
done
kubectl -n "$ns" wait --for=condition=Ready "communicationsdomain/$mdomain" --timeout="$timeout" \
  || die "CommunicationsDomain $mdomain did not become Ready: $(kubectl -n "$ns" get communicationsdomain "$mdomain" -o jsonpath='{.status.conditions}')"
# homeServer.storageSync reaches the server's config, and the running server took it.
mconfig=$(kubectl -n "$ns" get configmap "$mhs-config" -o jsonpath='{.data.parley\.toml}')
grep -qx 'sync = "checkpoint"' <<<"$mconfig" || die "storageSync: checkpoint is not in $mhs's config: $mconfig"
mlog=$(kubectl -n "$ns" logs "$mhs-0")
grep -q 'store open.*Checkpoint' <<<"$mlog" \
  || die "$mhs's server did not open its store with sync Checkpoint: $(tail -n 20 <<<"$mlog")"
echo "ok: $mhs runs with storage.sync = checkpoint (homeServer.storageSync)"
# slapd runs as the image's non-root user and wrote its config and database on the volume.
pv=$(kubectl -n "$ns" get pvc "data-$mdomain-directory-0" -o jsonpath='{.spec.volumeName}')
dir=$(kubectl get pv "$pv" -o jsonpath='{.spec.hostPath.path}')
[[ -f $dir/slapd.d/cn=config.ldif && -f $dir/data/data.mdb ]] || die "no cn=config or database on the directory's volume ($dir)"
owner=$(stat -c %u:%g "$dir/data/data.mdb")
[[ $owner == 65532:65532 ]] || die "the directory's database belongs to $owner, not 65532:65532"
echo "ok: the directory's cn=config and database are on its volume, owned by $owner"

kubectl -n "$ns" create secret generic user-passwords --from-file=alice="$work/alice.pw" \
  --from-file=bob="$work/bob.pw" --dry-run=client -o yaml | kubectl -n "$ns" apply -f - >/dev/null
# add_users JOB DOMAIN HOME_SERVER USER...: a Job adding USERs (passwords from Secret
# user-passwords) to DOMAIN's managed directory with `parley-server user add`, as its administrator,
# homed on HOME_SERVER or, when it is "", placed on the Home Server with the most free capacity.
add_users() {
  local job=$1 domain=$2 home=$3 user place=""
  shift 3
  [[ -z $home ]] || place="--home-server, \"$home\","
  user_container() {
    cat <<YAML
        - name: add-$1
          image: $server_repo:$tag
          imagePullPolicy: $pull_policy
          command: [/usr/local/bin/parley-server, user, add, "$1@example.test", $place --password-file, "/users/$1"]
          env:
            - {name: PARLEY_LDAP_URL, value: "ldaps://$domain-directory.$ns.svc:636"}
            - {name: PARLEY_LDAP_BASE_DN, value: "dc=example,dc=test"}
            - {name: PARLEY_LDAP_BIND_DN, valueFrom: {secretKeyRef: {name: $domain-directory-admin, key: bindDn}}}
            - {name: PARLEY_LDAP_BIND_PASSWORD_FILE, value: /admin/password}
            - {name: PARLEY_LDAP_CA_FILE, value: /ca/ca.crt}
          securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
          volumeMounts:
            - {name: admin, mountPath: /admin, readOnly: true}
            - {name: ca, mountPath: /ca, readOnly: true}
            - {name: users, mountPath: /users, readOnly: true}
YAML
  }
  local users=("$@") init="" last
  last=${users[-1]}
  for user in "${users[@]:0:${#users[@]}-1}"; do init+=$'\n'$(user_container "$user"); done
  kubectl -n "$ns" apply -f - <<YAML
apiVersion: batch/v1
kind: Job
metadata:
  name: $job
spec:
  backoffLimit: 0
  template:
    metadata:
      # The domain's NetworkPolicy admits the managed directory's clients by this label.
      labels: {parley.dev/domain: $domain}
    spec:
      restartPolicy: Never
      automountServiceAccountToken: false
      securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}
      initContainers: ${init:-[]}
      containers:
$(user_container "$last")
      volumes:
        - name: admin
          secret: {secretName: $domain-directory-admin, items: [{key: password, path: password}]}
        - name: ca
          secret: {secretName: $domain-directory-tls, items: [{key: ca.crt, path: ca.crt}]}
        - name: users
          secret: {secretName: user-passwords}
YAML
  local deadline=$((SECONDS + 120))
  until [[ -n $(kubectl -n "$ns" get job "$job" -o jsonpath='{.status.succeeded}{.status.failed}') ]]; do
    ((SECONDS < deadline)) || die "Job $job did not finish: $(kubectl -n "$ns" describe job "$job" | tail -n 5)"
    sleep 0.5
  done
  kubectl -n "$ns" logs "job/$job" --all-containers=true || true
  [[ $(kubectl -n "$ns" get job "$job" -o jsonpath='{.status.succeeded}') == 1 ]] || die "parley-server user add failed (Job $job)"
}
add_users add-users "$mdomain" "$mhs" alice bob
echo "ok: alice and bob added to the managed directory"

kubectl -n "$ns" get secret "$mdomain-ca" -o jsonpath='{.data.ca\.crt}' | base64 -d >"$work/dir-ca.crt"
if [[ $mode == node ]]; then
  m_tls=$(kubectl -n "$ns" get service "$mhs-sip" -o jsonpath='{.spec.ports[?(@.name=="sip-tls")].nodePort}')
  "$parley" probe --server "127.0.0.1:$m_tls" --ca "$work/dir-ca.crt" \
    --server-name "$mhs-sip.$ns.svc.cluster.local" --user alice@example.test --password-file "$work/alice.pw" \
    --peer bob@example.test --peer-password-file "$work/bob.pw" \
    || die "parley-server probe through $mhs-sip (users in the managed directory) failed"
  echo "ok: alice and bob, users of the managed directory, signed in and exchanged a MESSAGE"
else
  echo "managed-directory probe skipped on kind: its node ports are reached only through e2e/kind.yaml's mappings"
fi
kubectl -n "$ns" delete job add-users --wait=false >/dev/null
kubectl -n "$ns" delete communicationsdomain "$mdomain" --timeout="$timeout"
# The directory and its volume go with the domain (its StatefulSet deletes its claim).
kubectl -n "$ns" wait --for=delete "statefulset/$mdomain-directory" "service/$mdomain-directory" \
  "secret/$mdomain-directory-admin" "secret/$mdomain-directory-tls" "pod/$mdomain-directory-0" \
  "pod/$mhs-0" --timeout="$timeout" || die "the managed directory of $mdomain is still there"
kubectl -n "$ns" wait --for=delete "pvc/data-$mdomain-directory-0" --timeout="$timeout" \
  || die "the managed directory's volume claim outlived its domain"
kubectl -n "$ns" delete pvc "data-$mhs-0" "logs-$mhs-0" --timeout="$timeout"
echo "ok: the managed directory and its volume went with the domain"

step "users scale through the spec: 500 -> 25,000 -> 5,000 users (e2e/multi.yaml)"
# Certificates from the domain's CA; the Front-End dials the Home Servers' headless Services on the
# internal mutual-TLS port and names its pod IP there (the downward API), so the Home Servers reach
# the replica holding a client. Users are placed by free capacity; the scale-down drains the
# surplus Home Servers (a Job moves their users with their state) before it removes them.
ready_now() { # KIND/NAME: Ready for the spec it has now
  local observed generation ready
  read -r observed generation ready < <(kubectl -n "$ns" get "$1" -o jsonpath='{.status.observedGeneration} {.metadata.generation} {.status.conditions[?(@.type=="Ready")].status}{"\n"}' 2>/dev/null)
  [[ -n $observed && $observed == "$generation" && $ready == True ]]
}
wait_ready_now() {
  local deadline=$((SECONDS + ${timeout%s}))
  until ready_now "$1"; do
    ((SECONDS < deadline)) || die "$1 did not become Ready: $(kubectl -n "$ns" get "$1" -o jsonpath='{.status.conditions}')"
    sleep 0.5
  done
}
# says TEXT PATTERN: TEXT contains PATTERN. Never `cmd | grep -q` here: grep leaves at the first
# match, cmd may then die of SIGPIPE, and pipefail turns that into a failure.
says() { grep -q "$2" <<<"$1"; }
homed_on() { # USER HOME_SERVER: the Job that added USER says where it was placed
  local logs
  logs=$(kubectl -n "$ns" logs "job/add-$1" --all-containers=true)
  says "$logs" "homed on $2" || die "$1 was not placed on $2: $logs"
}
# probe_via SERVICE: alice and bob sign in, watch, publish and message through SERVICE's NodePort.
probe_via() {
  local port deadline
  port=$(kubectl -n "$ns" get service "$1" -o jsonpath='{.spec.ports[?(@.name=="sip-tls")].nodePort}')
  # A Service that just became a NodePort (or got its endpoints) is programmed by kube-proxy a
  # moment later: wait for the port to take connections.
  deadline=$((SECONDS + 60))
  until timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; do
    ((SECONDS < deadline)) || die "$1's node port $port refuses connections: $(kubectl -n "$ns" get endpointslices -l kubernetes.io/service-name="$1" -o wide)"
    sleep 1
  done
  "$parley" probe --server "127.0.0.1:$port" --ca "$work/multi-ca.crt" \
    --server-name "$1.$ns.svc.cluster.local" --user alice@example.test --password-file "$work/alice.pw" \
    --peer bob@example.test --peer-password-file "$work/bob.pw" || die "parley-server probe through $1 failed"
}
kubectl -n "$ns" apply -f e2e/multi.yaml
wait_ready_now communicationsdomain/multi
[[ $(kubectl -n "$ns" get communicationsdomain multi -o jsonpath='{.status.tier} {.status.homeServers}') == 'small ["multi-home-1"]' ]] \
  || die "500 users: $(kubectl -n "$ns" get communicationsdomain multi -o jsonpath='{.status}')"
add_users add-alice multi "" alice
homed_on alice multi-home-1
kubectl -n "$ns" patch communicationsdomain multi --type merge -p '{"spec":{"users":25000}}'
wait_ready_now communicationsdomain/multi
for r in homeserver/multi-home-1 homeserver/multi-home-2 homeserver/multi-home-3 frontend/multi-frontend; do
  wait_ready_now "$r"
done
kubectl -n "$ns" get communicationsdomain,homeservers,frontends,pods -l parley.dev/domain=multi
[[ $(kubectl -n "$ns" get communicationsdomain multi -o jsonpath='{.status.tier} {.status.frontEnd}') == 'enterprise multi-frontend' ]] \
  || die "25,000 users: $(kubectl -n "$ns" get communicationsdomain multi -o jsonpath='{.status}')"
[[ $(kubectl -n "$ns" get deployment multi-frontend -o jsonpath='{.status.readyReplicas}') == 2 ]] \
  || die "the enterprise tier's Front-End runs two replicas"
# The new Home Servers are empty; prep enterprise registered their capacity before they started.
add_users add-bob multi "" bob
homed_on bob multi-home-2
kubectl -n "$ns" get secret multi-ca -o jsonpath='{.data.ca\.crt}' | base64 -d >"$work/multi-ca.crt"
if [[ $mode == node ]]; then
  # A Home Server is in cluster DNS a moment after it is Ready; until a Front-End replica has
  # reached it, its users get 503 with Retry-After. Wait until each replica reports all three up
  # (its metrics, on the pod IP, which this host reaches).
  for fe_ip in $(kubectl -n "$ns" get pod -l app.kubernetes.io/instance=multi-frontend -o jsonpath='{.items[*].status.podIP}'); do
    deadline=$((SECONDS + 60))
    until [[ $(curl -sf "http://$fe_ip:8080/metrics" | grep -c '^parley_frontend_home_server_up{.*} 1$') == 3 ]]; do
      ((SECONDS < deadline)) || die "the Front-End at $fe_ip does not reach the three Home Servers: $(curl -sf "http://$fe_ip:8080/metrics" | grep home_server_up)"
      sleep 0.2
    done
  done
  # alice is homed on multi-home-1 and bob on multi-home-2: every step crosses the Front-End.
  probe_via multi-frontend
  says "$(kubectl -n "$ns" logs multi-home-1-0)" "signed in user=alice@example.test" || die "alice did not sign in on multi-home-1"
  says "$(kubectl -n "$ns" logs multi-home-2-0)" "signed in user=bob@example.test" || die "bob did not sign in on multi-home-2"
  echo "ok: alice signed in on multi-home-1 and bob on multi-home-2, both through multi-frontend"
else
  echo "scale-up probe skipped on kind: its node ports are reached only through e2e/kind.yaml's mappings"
fi

# 25,000 -> 5,000: multi-home-3 (empty) and multi-home-2 (bob) drain, highest first, then go;
# with one Home Server left the Front-End goes too and multi-home-1 takes the client Service.
kubectl -n "$ns" patch communicationsdomain multi --type merge -p '{"spec":{"users":5000}}'
kubectl -n "$ns" wait --for=delete homeserver/multi-home-3 homeserver/multi-home-2 frontend/multi-frontend --timeout="$timeout" \
  || die "the scale-down did not finish: $(kubectl -n "$ns" get communicationsdomain multi -o jsonpath='{.status}'); $(kubectl -n "$ns" get homeservers -o wide)"
wait_ready_now communicationsdomain/multi
wait_ready_now homeserver/multi-home-1
kubectl -n "$ns" get communicationsdomains,homeservers -l parley.dev/domain=multi
drain_events=$(kubectl -n "$ns" get events --field-selector involvedObject.kind=HomeServer \
  -o custom-columns=OBJECT:.involvedObject.name,REASON:.reason,NOTE:.message | grep -E 'Drain(ing|ed)')
echo "$drain_events"
grep -q 'multi-home-2 *Drained *every user of multi-home-2 was moved' <<<"$drain_events" \
  || die "no Drained Event for multi-home-2: $drain_events"
[[ $(kubectl -n "$ns" get communicationsdomain multi -o jsonpath='{.status.homeServers} {.status.phase}') == '["multi-home-1"] Ready' ]] \
  || die "5,000 users: $(kubectl -n "$ns" get communicationsdomain multi -o jsonpath='{.status}')"
kubectl -n "$ns" get pvc data-multi-home-2-0 >/dev/null || die "the removed Home Server's data volume was not kept"
if [[ $mode == node ]]; then
  deadline=$((SECONDS + 60))
  until [[ $(kubectl -n "$ns" get homeserver multi-home-1 -o jsonpath='{.status.users}') == 2 ]]; do
    ((SECONDS < deadline)) || die "multi-home-1 does not count both users: $(kubectl -n "$ns" get homeserver multi-home-1 -o jsonpath='{.status}')"
    sleep 1
  done
  # bob's contact list, rules and binding moved with him; he signs in on multi-home-1 now.
  probe_via multi-home-1-sip
  says "$(kubectl -n "$ns" logs multi-home-1-0)" "signed in user=bob@example.test" || die "bob did not sign in on multi-home-1"
  echo "ok: after the scale-down alice and bob are both on multi-home-1 and exchange messages through its Service"
fi
# A Home Server no node can take (a domain asking 64 CPUs for it): its status says why, in the
# scheduler's words.
kubectl -n "$ns" apply -f - <<'YAML'
apiVersion: parley.dev/v1alpha1
kind: CommunicationsDomain
metadata:
  name: toobig
spec:
  sipDomain: example.test
  users: 500
  homeServer:
    resources: {requests: {cpu: "64"}, limits: {cpu: "64"}}
  directory:
    file:
      configMap: users-toobig
      key: users.toml
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: users-toobig
data:
  users.toml: |
    [[users]]
    address = "alice@example.test"
    ha1_md5 = "9e08d7520c4e1e3699eba51896968f5d"
YAML
deadline=$((SECONDS + 60))
until says "$(kubectl -n "$ns" get homeserver toobig-home-1 -o jsonpath='{.status.conditions[?(@.type=="Ready")].message}' 2>/dev/null)" \
  'Insufficient cpu'; do
  ((SECONDS < deadline)) || die "HomeServer toobig-home-1 does not say why its pod waits: $(kubectl -n "$ns" get homeserver toobig-home-1 -o jsonpath='{.status.conditions}')"
  sleep 1
done
echo "ok: $(kubectl -n "$ns" get homeserver toobig-home-1 -o jsonpath='{.status.conditions[?(@.type=="Ready")].message}')"
kubectl -n "$ns" delete communicationsdomain toobig --timeout="$timeout"
kubectl -n "$ns" delete configmap users-toobig
kubectl -n "$ns" delete job add-alice add-bob --wait=false >/dev/null
kubectl -n "$ns" delete secret user-passwords >/dev/null
kubectl -n "$ns" delete -f e2e/multi.yaml --timeout="$timeout"
kubectl -n "$ns" wait --for=delete pod/multi-home-1-0 --timeout="$timeout"
# The Home Servers' volumes are retained (their users' state): the suite removes them itself.
for hs in multi-home-1 multi-home-2 multi-home-3 toobig-home-1; do
  kubectl -n "$ns" delete pvc "data-$hs-0" "logs-$hs-0" --ignore-not-found --timeout="$timeout"
done

step ""
echo
echo "e2e: passed in $((SECONDS - started)) s"
printf '%s\n' "${timings[@]}"
