#!/usr/bin/env bash
# Builds the real Kubernetes control plane the tests run on — kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl (Kubernetes 1.37), etcd
# and helm — from the pinned wrapper modules beside this script, once, into a
# versioned cache directory outside the repository, and prints that
# directory. A change to any go.mod/go.sum, to this script or to the Go
# toolchain builds into a new directory; an existing one is reused as is.
#
#   ENCLAVE_CACHE   where the cache lives (default ~/.cache/enclave)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
K8S_VERSION=v1.37.2

# Fail loudly rather than fetch a toolchain; git hosts cannot be reached,
# so the module proxy is the only source (no ",direct").
export GOTOOLCHAIN=local GOFLAGS=-mod=readonly CGO_ENABLED=0
export GOPROXY=${ENCLAVE_GOPROXY:-https://proxy.golang.org}

command -v go >/dev/null || { echo "go is not on the PATH: install Go >= 1.26 to build the control plane" >&2; exit 1; }

key=$( (cat "$HERE"/*/go.mod "$HERE"/*/go.sum "$HERE/build.sh"; go version) | sha256sum | cut -c1-12)
OUT="${ENCLAVE_CACHE:-$HOME/.cache/enclave}/control-plane/k8s-$K8S_VERSION-$key"
if [ -f "$OUT/.complete" ]; then
  echo "$OUT"
  exit 0
fi

start=$(date +%s)
mkdir -p "$OUT"
echo "==> building the control plane into $OUT (cold: 15-25 min on 2 cores)" >&2

# /version must report the real release, or kubectl, helm and our tests see
# v0.0.0-master.
minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
(cd "$HERE/kubernetes" && go build -trimpath -ldflags "$ldflags" -o "$OUT/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
(cd "$HERE/etcd" && go build -trimpath -ldflags "-s -w" -o "$OUT/etcd" go.etcd.io/etcd/server/v3)
helm_version=$(cd "$HERE/helm" && go list -m -f '{{.Version}}' helm.sh/helm/v3)
(cd "$HERE/helm" && go build -trimpath -o "$OUT/helm" \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version" helm.sh/helm/v3/cmd/helm)

touch "$OUT/.complete"
echo "==> control plane built in $(( $(date +%s) - start )) s" >&2
echo "$OUT"
