#!/usr/bin/env bash
# Builds pytier's two images without a Docker engine or a registry, as OCI
# archives (`ctr -n k8s.io images import`, `skopeo copy oci-archive:...`,
# `podman load` take them), and prints the directory holding them:
#   operator.tar     pytier/operator:<version>     the operator; runs as 65532
#   node-agent.tar   pytier/node-agent:<version>   the node agent and the
#                                                  interposer shim it installs
# Each image is its release binary with the shared libraries it links (glibc,
# libgcc), like distroless/cc: no shell, no package manager. The Dockerfiles
# beside the crates describe the same images for Docker users.
#
#   deploy/images.sh [OUT]   (default: $CARGO_TARGET_DIR/images)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
out=${1:-$target/images}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)  # [workspace.package]

mkdir -p "$out"

cargo build -q --release --locked -p pytier-operator --bin operator -p pytier-node-agent --bin node-agent >&2
shim=$(CARGO_TARGET_DIR=$target "$root/interposer/build-shim.sh" "$target/images-shim")

# rootfs DIR BINARY: the binary at /usr/local/bin with the libraries ldd
# names, at the same paths, and a passwd naming root and nonroot.
rootfs() {
  local dir=$1 binary=$2
  mkdir -p "$dir/usr/local/bin" "$dir/etc" "$dir/tmp"
  chmod 1777 "$dir/tmp"
  cp "$binary" "$dir/usr/local/bin/"
  for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
    mkdir -p "$dir$(dirname "$lib")"
    cp -L "$lib" "$dir$lib"
  done
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$dir/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$dir/etc/group"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rootfs "$work/operator" "$target/release/operator"
python3 "$root/deploy/oci-archive.py" "$work/operator" "$out/operator.tar" "docker.io/pytier/operator:$version" \
  --entrypoint /usr/local/bin/operator --user 65532:65532
rootfs "$work/node-agent" "$target/release/node-agent"
mkdir -p "$work/node-agent/opt/pytier"
cp -r "$shim" "$work/node-agent/opt/pytier/shim-dist"
python3 "$root/deploy/oci-archive.py" "$work/node-agent" "$out/node-agent.tar" "docker.io/pytier/node-agent:$version" \
  --entrypoint /usr/local/bin/node-agent
echo "images.sh: pytier/operator:$version and pytier/node-agent:$version in $out" >&2
echo "$out"
