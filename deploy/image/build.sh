#!/usr/bin/env bash
# make image: the segment-relay OCI image, built on this machine from the project's own files
# with Debian's buildah: no Docker engine, no registry, nothing pulled. The release binaries go
# through deploy/image/rootfs.sh (the same script deploy/Dockerfile's build stage runs) and the
# runtime stage of deploy/Dockerfile (from its `FROM scratch` line on, with its COPY pointed at
# that directory) builds the image. Tags localhost/segment-relay:<workspace version> and :dev,
# and prints the image size.
#
# Environment: IMAGE_NAME (default localhost/segment-relay).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
say() { echo "image: $*"; }
die() { echo "image: FAILED: $*" >&2; exit 1; }

name=${IMAGE_NAME:-localhost/segment-relay}
version=$(awk '/^\[workspace.package\]/ { in_block = 1; next } /^\[/ { in_block = 0 }
  in_block && $1 == "version" { gsub(/"/, "", $3); print $3; exit }' Cargo.toml)
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+ ]] || die "cannot read [workspace.package] version from Cargo.toml (got '$version')"
for tool in buildah podman; do command -v "$tool" >/dev/null || die "$tool not found: apt-get install buildah podman runc (.ci/run does)"; done
work=target/image

say "building the release binaries (cargo build --release --locked --bins)…"
cargo build --release --locked --bins
deploy/image/rootfs.sh target/release "$work/rootfs"

# The runtime stage of deploy/Dockerfile, word for word but for the COPY's source: the build
# stage's /rootfs/ is $work/rootfs/ here.
awk '/^FROM scratch$/ { found = 1 } found' deploy/Dockerfile |
  sed 's|^COPY --from=build /rootfs/ /$|COPY rootfs/ /|' >"$work/Containerfile"
grep -qx 'FROM scratch' "$work/Containerfile" || die "deploy/Dockerfile has no \`FROM scratch\` runtime stage"
[[ $(grep -c '^COPY' "$work/Containerfile") == 1 ]] && grep -qx 'COPY rootfs/ /' "$work/Containerfile" ||
  die "the runtime stage of deploy/Dockerfile must copy the build stage's rootfs alone (COPY --from=build /rootfs/ /)"

# The image this build replaces: removed below once no tag names it (each build would otherwise
# leave ~50 MB behind in the vfs store).
previous=$(buildah --storage-driver vfs inspect --type image --format '{{.FromImageID}}' "$name:dev" 2>/dev/null || true)
buildah --storage-driver vfs bud --isolation chroot --quiet \
  -t "$name:$version" -t "$name:dev" -f "$work/Containerfile" "$work" >/dev/null
current=$(buildah --storage-driver vfs inspect --type image --format '{{.FromImageID}}' "$name:dev")
if [[ -n $previous && $previous != "$current" ]]; then
  buildah --storage-driver vfs rmi "$previous" >/dev/null 2>&1 || true # still tagged or in use elsewhere: kept
fi
bytes=$(podman --storage-driver vfs image inspect --format '{{.Size}}' "$name:$version")
[[ $bytes =~ ^[0-9]+$ ]] || die "cannot read the size of $name:$version (got '$bytes')"
say "built $name:$version (also :dev): $((bytes / 1000000)) MB ($bytes bytes; $(du -sh "$work/rootfs" | cut -f1) unpacked)"
