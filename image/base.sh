#!/usr/bin/env bash
# Builds (once) the Debian 12 root file system of the operator image — the
# essential set plus ca-certificates, git and openssh-client, without
# documentation — as a tar in a cache outside the repository, and prints
# its path. Needs root and mmdebstrap (Debian package), and the Debian
# mirror. A change to this script builds a new one.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PACKAGES=ca-certificates,git,openssh-client
key=$(sha256sum "$HERE/base.sh" | cut -c1-12)
CACHE="${ENCLAVE_CACHE:-$HOME/.cache/enclave}/image"
OUT="$CACHE/debian-bookworm-$key.tar"
if [ ! -f "$OUT" ]; then
  mkdir -p "$CACHE"
  mmdebstrap --quiet --variant=essential --include="$PACKAGES" \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --format=tar bookworm "$OUT.partial" >&2
  mv "$OUT.partial" "$OUT"
fi
echo "$OUT"
