# What build (the engine's stand-ins, this machine's platform) and build-arm64 (arm64 ones, through buildx) share.
# Sourced; $here is this folder.
prefix=${AIRGAP_PREFIX:-airgap}
debian=$prefix/debian:trixie-slim
python=$prefix/python:3.13-slim-trixie
distroless=$prefix/distroless/python3-debian13:nonroot
postgres=$prefix/postgres:17-trixie
prometheus=$prefix/prometheus:trixie
host_ca_dir=/usr/local/share/ca-certificates
host_bundle=/etc/ssl/certs/ca-certificates.crt

# The recipe: this folder and the host's CA certificates. A stand-in built from another recipe is rebuilt.
recipe=$(cd "$here" && { find . -type f -print0 | sort -z | xargs -0 sha256sum; \
  cat "$host_bundle" "$host_ca_dir"/*.crt 2>/dev/null; } | sha256sum | cut -c1-16)

debian_rootfs() {  # arch dir: a minbase trixie, slimmed (arm64's second stage runs under QEMU, through binfmt_misc)
  local arch=$1 rootfs=$2
  # DEBIAN_MIRROR lets a team use its own mirror; empty means debootstrap's default.
  debootstrap --arch="$arch" --variant=minbase trixie "$rootfs" ${DEBIAN_MIRROR:-} >/dev/null
  # Slim before the import: files deleted in a later layer would still weigh in the image.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
  find "$rootfs/usr/share/doc" -type f ! -name copyright -delete
  find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
}

debian_context() {  # rootfs context: debian/'s build context, with the rootfs's mirror and the host's CA trust
  local rootfs=$1 context=$2 mirror
  mirror=$(awk '/^deb /{print $2; exit}' "$rootfs/etc/apt/sources.list")
  cp "$here/debian/Dockerfile" "$here/debian/pip.conf" "$here/debian/slim.cfg" "$context/"
  sed "s|@MIRROR@|$mirror|g" "$here/debian/debian.sources.in" > "$context/debian.sources"
  mkdir "$context/host-ca"
  cp "$host_ca_dir"/*.crt "$context/host-ca/" 2>/dev/null || :
  cp "$host_bundle" "$context/host-ca-bundle.crt"
}
