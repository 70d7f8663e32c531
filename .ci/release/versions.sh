# The release tools' pinned versions, sourced by every script in this folder so each has one home. After a change,
# run `bash .ci/release/pin` and commit the go.mod and go.sum files it rewrites.
CRANE_VERSION=v0.22.1       # github.com/google/go-containerregistry: crane (registry serve, push, digest)
COSIGN_VERSION=v2.6.1       # github.com/sigstore/cosign/v2: signs and verifies by digest with a key pair
SYFT_VERSION=v1.57.2        # github.com/anchore/syft: SBOMs of the images
ACTIONLINT_VERSION=v1.7.12  # github.com/rhysd/actionlint: the workflows' linter, in make scan
BUILDX_VERSION=v0.38.2      # github.com/docker/buildx: the CLI plugin ci.yml's build and Compose's build run
BUILDKIT_VERSION=v0.34.2    # github.com/moby/buildkit: buildkitd, the builder buildx drives (multi-platform, attestations)
