# A release rehearsed on this machine, which reaches no registry: the Makefile pulls this in with
# `-include .ci/release/release.mk`. The tools come from .ci/release/build, the registry from .ci/registry/up.
.PHONY: release-local
release-local: build ## push each built variant to a local registry by digest, sign, verify, SBOM it (build/release/)
	@bash .ci/release/local $(IMAGE) $(VARIANTS)
