#!/usr/bin/env bash
# make image-push IMAGE_DEST=…: pushes the image `make image` built last (localhost/segment-relay:dev,
# the same image as its :<version> tag) to IMAGE_DEST, any podman destination: a registry
# (docker://registry.example.com/segment-relay:0.1.0; log in first with `podman login`), or an
# archive to load into a cluster without a registry (oci-archive:/tmp/segment-relay.tar).
# Environment: IMAGE_DEST (required), IMAGE_NAME (default localhost/segment-relay).
set -euo pipefail
die() { echo "image-push: FAILED: $*" >&2; exit 1; }
dest=${IMAGE_DEST:-}
[[ $dest == *:* ]] || die "set IMAGE_DEST to where the image goes, e.g. IMAGE_DEST=docker://registry.example.com/segment-relay:0.1.0"
image=${IMAGE_NAME:-localhost/segment-relay}:dev
command -v podman >/dev/null || die "podman not found: apt-get install buildah podman runc (.ci/run does)"
# The storage make image builds into (deploy/image/build.sh).
podman --storage-driver vfs image exists "$image" || die "image $image not found: run make image first"
podman --storage-driver vfs push --quiet "$image" "$dest"
echo "image-push: pushed $image to $dest"
