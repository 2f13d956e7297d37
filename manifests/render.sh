#!/usr/bin/env bash
# Regenerates what is generated from the Rust types and the chart:
#   crds/ and charts/enclave/crds/ (the CRDs), the operator configuration's
#   schema in charts/enclave/values.schema.json, and manifests/enclave.yaml
#   (the chart rendered for `kubectl apply`, namespace included).
# Needs helm: the one e2e/control-plane/build.sh builds, or HELM=/path/to/helm.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
HELM=${HELM:-$(e2e/control-plane/build.sh)/helm}
cargo run -q -p enclave-operator -- crdgen --out-dir crds --chart charts/enclave
{
  echo "# Enclave, rendered from charts/enclave with its default values by manifests/render.sh;"
  echo "# do not edit. Install: kubectl apply --server-side -f manifests/enclave.yaml"
  "$HELM" template enclave charts/enclave --namespace enclave-system --include-crds --set namespace.create=true --set crds.upgradeHook=false --kube-version 1.37.0
} >manifests/enclave.yaml
echo "wrote crds/, charts/enclave/crds/, charts/enclave/values.schema.json, manifests/enclave.yaml" >&2
