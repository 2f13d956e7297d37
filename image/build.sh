#!/usr/bin/env bash
# Builds the operator image without a container daemon: the Debian root file
# system of image/base.sh, the enclave binary, a non-root user, assembled
# into an OCI image layout and archive with umoci (Debian package).
#   image/build.sh [--binary PATH] [--tag TAG] [--out DIR]
# Defaults: a release build, the crate's version as the tag (the chart's
# default image), target/image as the output. Push the archive with e.g.
#   skopeo copy oci-archive:target/image/enclave-0.1.0.oci.tar docker://ghcr.io/enclave-dev/enclave:0.1.0
# Needs root (the root file system holds root-owned files).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BINARY="" TAG="" OUT="$ROOT/target/image"
while [ $# -gt 0 ]; do
  case $1 in
    --binary) BINARY=$2; shift 2 ;;
    --tag) TAG=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "unknown argument $1; see the header of $0" >&2; exit 2 ;;
  esac
done
if [ -z "$TAG" ]; then
  TAG=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
fi
if [ -z "$BINARY" ]; then
  cargo build --release --locked -p enclave-operator >&2
  BINARY="$ROOT/target/release/enclave"
fi
BASE=$(image/base.sh)
rm -rf "$OUT" && mkdir -p "$OUT"
umoci init --layout "$OUT/oci"
umoci new --image "$OUT/oci:$TAG"
umoci unpack --image "$OUT/oci:$TAG" "$OUT/bundle" >/dev/null
tar -C "$OUT/bundle/rootfs" -xf "$BASE"
install -D -m 0755 "$BINARY" "$OUT/bundle/rootfs/usr/local/bin/enclave"
strip "$OUT/bundle/rootfs/usr/local/bin/enclave"
echo 'nonroot:x:65532:65532::/home/nonroot:/usr/sbin/nologin' >>"$OUT/bundle/rootfs/etc/passwd"
echo 'nonroot:x:65532:' >>"$OUT/bundle/rootfs/etc/group"
umoci repack --image "$OUT/oci:$TAG" "$OUT/bundle"
umoci config --image "$OUT/oci:$TAG" \
  --config.entrypoint /usr/local/bin/enclave --config.user 65532:65532 --config.workingdir / \
  --config.label "org.opencontainers.image.title=enclave" \
  --config.label "org.opencontainers.image.version=$TAG"
umoci gc --layout "$OUT/oci"
rm -rf "$OUT/bundle"
tar -C "$OUT/oci" -cf "$OUT/enclave-$TAG.oci.tar" .
echo "$OUT/enclave-$TAG.oci.tar"
