#!/usr/bin/env bash
# Starts a real Kubernetes control plane on loopback in DIR and returns once
# it serves: etcd, kube-apiserver (TLS, RBAC authorisation, the default
# admission plugins — PodSecurity, ServiceAccount, ResourceQuota, LimitRanger
# among them — ServiceAccount token issuing, an audit log), kube-controller-
# manager (the controllers listed below) and kube-scheduler, plus one Node
# object for the scheduler to bind pods to (no kubelet: the tests' stand-in
# runs those pods' commands). Writes into DIR:
#   kubeconfig         an admin kubeconfig (client certificate in system:masters)
#   ca.crt             the CA of the serving and client certificates
#   sa.key, sa.pub     the ServiceAccount token signing key pair
#   audit.log          every request: user, verb, resource, response code
#   pids, env          the processes (stop.sh DIR stops them) and the addresses
#   *.log              each component's log
#
#   start.sh DIR [BIN]   BIN: the binaries (default: what build.sh prints)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DIR=${1:?usage: start.sh DIR [BIN]}
BIN=${2:-$("$HERE/build.sh")}
NODE=enclave-node
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
: >"$DIR/pids"

fail() {
  echo "control plane in $DIR: $*" >&2
  for log in "$DIR"/*.log; do [ "$(basename "$log")" = audit.log ] || { echo "--- $log (tail)" >&2; tail -n 15 "$log" >&2; }; done
  "$HERE/stop.sh" "$DIR"
  exit 1
}

# --- PKI: one CA; P-256 keys are fast to make and every component takes them.
pki() {
  cd "$DIR"
  openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
  openssl req -x509 -new -key ca.key -days 3650 -subj "/CN=enclave-test-ca" -out ca.crt 2>/dev/null
  local name subj ext
  for name in apiserver admin; do
    openssl ecparam -name prime256v1 -genkey -noout -out "$name.key" 2>/dev/null
    case $name in
      apiserver) subj="/CN=kube-apiserver"
        ext="subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" ;;
      admin) subj="/O=system:masters/CN=enclave-test-admin"; ext="extendedKeyUsage=clientAuth" ;;
    esac
    openssl req -new -key "$name.key" -subj "$subj" -out "$name.csr" 2>/dev/null
    openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile <(echo "$ext") -out "$name.crt" 2>/dev/null
  done
  openssl ecparam -name prime256v1 -genkey -noout -out sa.key 2>/dev/null
  openssl ec -in sa.key -pubout -out sa.pub 2>/dev/null
  cd - >/dev/null
}

spawn() { # name command...
  local name=$1; shift
  setsid "$@" >"$DIR/$name.log" 2>&1 </dev/null &
  echo "$! $name" >>"$DIR/pids"
}

pki

cat >"$DIR/audit-policy.yaml" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
EOF

kubectl() { "$BIN/kubectl" --kubeconfig="$DIR/kubeconfig" "$@"; }

# Starts etcd and kube-apiserver on fresh ports (e2e/free-port) and waits
# until the API server is ready. Returns 2 when one of them could not bind
# its port (another test's server took it between the pick and the bind):
# the caller starts again on new ports.
serve_api() {
  local ports pid name
  mapfile -t ports < <("$HERE/../free-port" 3)
  ETCD_PORT=${ports[0]}; PEER_PORT=${ports[1]}; API_PORT=${ports[2]}
  API="https://127.0.0.1:$API_PORT"

  cat >"$DIR/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: enclave-test
  cluster:
    server: $API
    certificate-authority: $DIR/ca.crt
users:
- name: admin
  user:
    client-certificate: $DIR/admin.crt
    client-key: $DIR/admin.key
contexts:
- name: enclave-test
  context: {cluster: enclave-test, user: admin}
current-context: enclave-test
EOF

  spawn etcd "$BIN/etcd" --name=enclave-test --data-dir="$DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$PEER_PORT" \
    --initial-cluster="enclave-test=http://127.0.0.1:$PEER_PORT" \
    --unsafe-no-fsync=true --quota-backend-bytes=8589934592 --log-level=warn

  # The audit log is never rotated (a maxsize of 0 means lumberjack's 100 MB):
  # tests and the benchmark count requests in it, and 100 x 10 tenants fill
  # 100 MB before their deletion is done.
  # Not --advertise-address=127.0.0.1: endpoint validation refuses loopback.
  # The address chosen instead exists only as API data (the `kubernetes`
  # Service's endpoints); nothing connects to it.
  spawn kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --secure-port="$API_PORT" \
    --tls-cert-file="$DIR/apiserver.crt" --tls-private-key-file="$DIR/apiserver.key" \
    --client-ca-file="$DIR/ca.crt" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$DIR/sa.pub" --service-account-signing-key-file="$DIR/sa.key" \
    --service-cluster-ip-range=10.96.0.0/16 \
    --authorization-mode=RBAC \
    --audit-policy-file="$DIR/audit-policy.yaml" --audit-log-path="$DIR/audit.log" \
    --audit-log-format=json --audit-log-mode=blocking --audit-log-maxsize=1000000 \
    --profiling="${ENCLAVE_TEST_APISERVER_PROFILING:-false}" --v=0

  for _ in $(seq 1 600); do
    if kubectl get --raw /readyz >/dev/null 2>&1; then return 0; fi
    while read -r pid name; do
      kill -0 "$pid" 2>/dev/null && continue
      grep -qs "address already in use" "$DIR/etcd.log" "$DIR/kube-apiserver.log" && return 2
      fail "$name exited"
    done <"$DIR/pids"
    sleep 0.1
  done
  fail "kube-apiserver not ready after 60 s"
}

for attempt in 1 2 3; do
  status=0
  serve_api || status=$?
  [ "$status" = 0 ] && break
  [ "$attempt" = 3 ] && fail "a port was taken at each of 3 attempts"
  echo "control plane in $DIR: a port was taken; starting again on new ports" >&2
  "$HERE/stop.sh" "$DIR"
  rm -rf "$DIR/etcd" "$DIR/audit.log" "$DIR/etcd.log" "$DIR/kube-apiserver.log"
done

# Not the node lifecycle controller: with no kubelet heartbeat it would taint
# the Node and evict every pod.
CONTROLLERS=garbage-collector-controller,namespace-controller,serviceaccount-controller
CONTROLLERS+=,statefulset-controller,job-controller,deployment-controller,replicaset-controller
CONTROLLERS+=,resourcequota-controller,disruption-controller,ttl-after-finished-controller
CONTROLLERS+=,persistentvolume-binder-controller,persistentvolume-protection-controller
CONTROLLERS+=,persistentvolumeclaim-protection-controller,root-ca-certificate-publisher-controller
# The default admin, edit and view ClusterRoles are aggregated by this one;
# without it they are empty and binding them is no escalation at all.
CONTROLLERS+=,clusterrole-aggregation-controller
# --secure-port=0 here and for the scheduler: nothing reads their health
# endpoints, and each port served is one more that can collide.
spawn kube-controller-manager "$BIN/kube-controller-manager" \
  --kubeconfig="$DIR/kubeconfig" --authentication-kubeconfig="$DIR/kubeconfig" --authorization-kubeconfig="$DIR/kubeconfig" \
  --secure-port=0 --leader-elect=false \
  --controllers="$CONTROLLERS" \
  --service-account-private-key-file="$DIR/sa.key" --root-ca-file="$DIR/ca.crt" \
  --concurrent-gc-syncs=5 --kube-api-qps=200 --kube-api-burst=400 --v=0

spawn kube-scheduler "$BIN/kube-scheduler" \
  --kubeconfig="$DIR/kubeconfig" --authentication-kubeconfig="$DIR/kubeconfig" --authorization-kubeconfig="$DIR/kubeconfig" \
  --secure-port=0 --leader-elect=false \
  --kube-api-qps=200 --kube-api-burst=400 --v=0

# (Started only once the API server is ready: both exit when it refuses
# their first request, as it does while starting on a loaded machine.)
while read -r pid name; do kill -0 "$pid" 2>/dev/null || fail "$name exited"; done <"$DIR/pids"

# The Node the scheduler binds pods to. Status is a subresource: capacity
# and the Ready condition go in a second write.
kubectl apply -f - >/dev/null <<EOF || fail "cannot create the Node"
apiVersion: v1
kind: Node
metadata:
  name: $NODE
  labels: {kubernetes.io/hostname: $NODE, kubernetes.io/os: linux, kubernetes.io/arch: amd64}
EOF
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
kubectl patch node "$NODE" --subresource=status --type=merge -p "{\"status\": {
  \"capacity\": {\"cpu\": \"64\", \"memory\": \"256Gi\", \"pods\": \"1000\", \"ephemeral-storage\": \"1Ti\"},
  \"allocatable\": {\"cpu\": \"64\", \"memory\": \"256Gi\", \"pods\": \"1000\", \"ephemeral-storage\": \"1Ti\"},
  \"conditions\": [{\"type\": \"Ready\", \"status\": \"True\", \"reason\": \"KubeletReady\", \"message\": \"the tests' kubelet stand-in\", \"lastHeartbeatTime\": \"$now\", \"lastTransitionTime\": \"$now\"}]}}" \
  >/dev/null || fail "cannot set the Node's status"
# The TaintNodesByCondition admission plugin taints a new Node not-ready; the
# node lifecycle controller (not run: no kubelet heartbeats) would lift it.
kubectl taint node "$NODE" node.kubernetes.io/not-ready:NoSchedule- >/dev/null || fail "cannot untaint the Node"

cat >"$DIR/env" <<EOF
KUBECONFIG=$DIR/kubeconfig
ENCLAVE_TEST_K8S_API=$API
ENCLAVE_TEST_K8S_CA=$DIR/ca.crt
ENCLAVE_TEST_K8S_NODE=$NODE
ENCLAVE_TEST_K8S_AUDIT_LOG=$DIR/audit.log
EOF
