# A release rehearsed on this machine, which reaches no registry: the Makefile pulls this in with
# `-include .ci/release/release.mk`. The tools come from .ci/release/build, the registry from .ci/registry/up, the
# builder from .ci/builder/up; the Compose stack the arm64 image runs takes the database image make would.
.PHONY: release-local
release-local: ## ci.yml's image and publish jobs against a local registry: both platforms, by digest, signed (build/release/)
	@$(MAKE) --no-print-directory $(DB_PASSWORD_FILE)
	@POSTGRES_IMAGE=$(POSTGRES_IMAGE) bash .ci/release/local $(IMAGE) $(VARIANTS)
