# What every script here shares: the pinned versions and where the built tools live. Sourced, from this folder.
. ./versions.sh

# Outside the repository and keyed by version, so a second CI run (or a second clone) reuses the build.
cache=${NOTES_RELEASE_CACHE:-/var/cache/notes-release}
export GOMODCACHE=$cache/gomod GOCACHE=$cache/gocache GOTOOLCHAIN=local
# Writable module files, so `rm -rf` can empty the cache.
export GOFLAGS="-modcacherw ${GOFLAGS:-}"

tools=(crane cosign syft actionlint buildx buildkitd)
version_of() {
  case $1 in
    crane) echo "$CRANE_VERSION" ;;
    cosign) echo "$COSIGN_VERSION" ;;
    syft) echo "$SYFT_VERSION" ;;
    actionlint) echo "$ACTIONLINT_VERSION" ;;
    buildx) echo "$BUILDX_VERSION" ;;
    buildkitd) echo "$BUILDKIT_VERSION" ;;
    *) return 1 ;;
  esac
}
module_of() {
  case $1 in
    crane) echo github.com/google/go-containerregistry ;;
    cosign) echo github.com/sigstore/cosign/v2 ;;
    syft) echo github.com/anchore/syft ;;
    actionlint) echo github.com/rhysd/actionlint ;;
    buildx) echo github.com/docker/buildx ;;
    buildkitd) echo github.com/moby/buildkit ;;
  esac
}
package_of() {
  case $1 in
    crane) echo github.com/google/go-containerregistry/cmd/crane ;;
    cosign) echo github.com/sigstore/cosign/v2/cmd/cosign ;;
    syft) echo github.com/anchore/syft/cmd/syft ;;
    actionlint) echo github.com/rhysd/actionlint/cmd/actionlint ;;
    buildx) echo github.com/docker/buildx/cmd/buildx ;;
    buildkitd) echo github.com/moby/buildkit/cmd/buildkitd ;;
  esac
}
# Where a tool's binary is: one folder per tool and version, so a bump builds the new one beside the old.
path_of() { echo "$cache/$1-$(version_of "$1")/$1"; }
