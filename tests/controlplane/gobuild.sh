# Sourced by the build scripts: builds commands from pinned Go wrapper modules
# into a cache outside the repository, so a warm run builds nothing.
#
#   go_build NAME MODULE_DIR PACKAGE [GO BUILD FLAGS...]
#
# builds PACKAGE (a path inside the module, or an import path its go.mod pins)
# into $out/NAME-<key> and links $out/NAME to it. The key hashes the module's
# go.mod and go.sum, the package's own sources when it lives in the module, and
# the flags, so a new pin or flag is a new binary. Set $out before calling.

command -v go >/dev/null || { echo "go_build: Go toolchain not found; install Go >= 1.26" >&2; exit 1; }

go_build() {
  local name=$1 dir=$2 pkg=$3
  shift 3
  local key
  key=$( {
    cat "$dir"/go.mod "$dir"/go.sum "$dir"/*.go 2>/dev/null
    if [ -d "$dir/$pkg" ]; then cat "$dir/$pkg"/*.go; fi
    echo "$pkg" "$*" "${CGO_ENABLED:-}"
  } | sha256sum | cut -c1-16)
  local bin=$out/$name-$key
  if [ ! -x "$bin" ]; then
    echo "go_build: building $name (cache miss, key $key); a cold build takes minutes" >&2
    local started=$SECONDS
    (cd "$dir" && go build -trimpath "$@" -o "$bin.tmp" "$pkg")
    mv "$bin.tmp" "$bin"
    echo "go_build: $name built in $((SECONDS - started))s" >&2
  fi
  ln -sfn "$bin" "$out/$name"
}

# The -ldflags that stamp a k8s.io/kubernetes command with its upstream
# version, so `--version`, logs and the Node object say what runs.
kube_version_ldflags() {
  local v vpkg=k8s.io/component-base/version
  v=$(cd "$1" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
  echo "-s -w -X $vpkg.gitVersion=$v -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$(echo "$v" | cut -d. -f2) -X $vpkg.gitTreeState=clean"
}
