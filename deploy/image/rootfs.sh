#!/usr/bin/env bash
# The runtime root file system of the segment-relay image, made from the release binaries and
# the build machine's own files (nothing is pulled): the four binaries (stripped), the shared
# libraries `ldd` lists for them at the paths the loader looks for them, a CA bundle, a nonroot
# user 65532 (the manifests' runAsUser), and no shell. ONE script for both ways of building the
# image, so they cannot drift: `make image` (deploy/image/build.sh, buildah) runs it on this
# machine, and the build stage of deploy/Dockerfile runs it in rust:…-bookworm; both runtime
# stages are `FROM scratch` + a COPY of this directory.
#
# Usage: deploy/image/rootfs.sh BIN_DIR OUT_DIR   e.g. deploy/image/rootfs.sh target/release target/image/rootfs
set -euo pipefail

bin_dir=${1:?usage: $0 BIN_DIR OUT_DIR}
out=${2:?usage: $0 BIN_DIR OUT_DIR}
binaries=(qualifier delivery partner-sim loadgen)
ca_bundle=/etc/ssl/certs/ca-certificates.crt
die() { echo "rootfs: FAILED: $*" >&2; exit 1; }

for tool in strip ldd; do command -v "$tool" >/dev/null || die "$tool not found (binutils, libc-bin)"; done
[[ -f $ca_bundle ]] || die "$ca_bundle not found: install Debian's ca-certificates package"
rm -rf "$out"
mkdir -p "$out/usr/local/bin" "$out/etc/ssl/certs" "$out/home/nonroot" "$out/tmp"
chmod 1777 "$out/tmp"

# ---- binaries, stripped (debug line tables and symbols: ~140 of the ~175 MB) ------------
for name in "${binaries[@]}"; do
  [[ -x $bin_dir/$name ]] || die "$bin_dir/$name not found: run cargo build --release --locked --bins"
  strip --strip-all -o "$out/usr/local/bin/$name" "$bin_dir/$name"
  chmod 0755 "$out/usr/local/bin/$name"
done

# ---- shared libraries, where the loader of this glibc looks without an ld.so.cache ----------
# `ldd` prints `libssl.so.3 => /lib/x86_64-linux-gnu/libssl.so.3 (0x…)` for a library and the
# loader itself as `/lib64/ld-linux-x86-64.so.2 (0x…)`; vdso has no file. A library that is
# `not found` stops the build here rather than the container at its start.
libs=$(for name in "${binaries[@]}"; do ldd "$bin_dir/$name"; done | awk '
  /not found/ { print "MISSING " $1; next }
  $2 == "=>" && $3 ~ /^\// { print $3; next }
  $1 ~ /^\// { print $1 }' | sort -u)
if grep -q '^MISSING' <<<"$libs"; then die "ldd cannot find: $(grep '^MISSING' <<<"$libs" | cut -d' ' -f2 | tr '\n' ' ')"; fi
[[ -n $libs ]] || die "ldd listed no libraries: the binaries are not dynamically linked as expected"
while read -r lib; do
  mkdir -p "$out$(dirname "$lib")"
  cp -L "$lib" "$out$lib" # the file, not the symlink chain of the build machine
  chmod 0644 "$out$lib"
done <<<"$libs"
chmod 0755 "$out"/lib64/ld-linux-* 2>/dev/null || true

# ---- CA bundle, users, name resolution -------------------------------------------------------
# reqwest (rustls, native roots) and librdkafka (OpenSSL) both find the bundle at this path.
cp -L "$ca_bundle" "$out$ca_bundle"
chmod 0644 "$out$ca_bundle"
# No login shell exists; /sbin/nologin is a name only.
cat >"$out/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$out/etc/group" <<'EOF'
root:x:0:
nonroot:x:65532:
EOF
# /etc/hosts first (Kubernetes and podman mount one), then DNS.
cat >"$out/etc/nsswitch.conf" <<'EOF'
passwd: files
group: files
hosts: files dns
EOF
chmod 0644 "$out/etc/passwd" "$out/etc/group" "$out/etc/nsswitch.conf"

echo "rootfs: $out: ${#binaries[@]} binaries, $(wc -l <<<"$libs") shared libraries, CA bundle; $(du -sh "$out" | cut -f1)"
