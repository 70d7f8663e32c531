# `make` lists the targets. Base images come from four variables; their defaults are the upstream images, and
# .ci/airgap.mk (written by `bash .ci/run --setup-only` on a machine without a registry) points them at local
# stand-ins. A team with a registry mirror sets them, e.g. make build PYTHON_IMAGE=mirror.example/python:3.13-slim-trixie
-include .ci/airgap.mk
PYTHON_IMAGE ?= python:3.13-slim-trixie
BUILD_IMAGE ?= debian:trixie-slim
DISTROLESS_IMAGE ?= gcr.io/distroless/python3-debian13:nonroot
POSTGRES_IMAGE ?= postgres:17-trixie
export PYTHON_IMAGE BUILD_IMAGE DISTROLESS_IMAGE POSTGRES_IMAGE

VENV ?= .venv
PYTEST := $(VENV)/bin/python -m pytest

.DEFAULT_GOAL := help
.PHONY: help test venv

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z0-9-]+:.*## / {printf "  make %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

venv: $(VENV)/.installed $(VENV)/checkov/bin/checkov ## create .venv with the pinned test and tool dependencies

$(VENV)/.installed: tests/requirements.txt requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --require-hashes -r tests/requirements.txt
	touch $@

# checkov pins packaging<24 and pytest needs >=24: it gets a virtual environment of its own.
$(VENV)/checkov/bin/checkov: tests/requirements-checkov.txt | $(VENV)/.installed
	python3 -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/pip install --quiet --require-hashes -r tests/requirements-checkov.txt
	touch $@

test: venv ## run every test: the app against a real Postgres, the images, Compose and Kubernetes manifests
	$(PYTEST) tests

IMAGE ?= notes-web
REVISION := $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
VERSION := $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
BUILD_ARGS = --build-arg PYTHON_IMAGE --build-arg BUILD_IMAGE --build-arg DISTROLESS_IMAGE \
  --build-arg REVISION=$(REVISION) --build-arg VERSION=$(VERSION) \
  --build-arg CREATED=$(shell date -u +%Y-%m-%dT%H:%M:%SZ) --build-arg SOURCE=$(SOURCE)
SOURCE ?= $(shell git config --get remote.origin.url 2>/dev/null || echo unknown)

.PHONY: build compare
build: ## build both images: $(IMAGE):slim and $(IMAGE):distroless, each also tagged with the git revision
	docker build $(BUILD_ARGS) -f Dockerfile -t $(IMAGE):slim -t $(IMAGE):slim-$(REVISION) .
	docker build $(BUILD_ARGS) -f Dockerfile.distroless -t $(IMAGE):distroless -t $(IMAGE):distroless-$(REVISION) .

compare: build venv ## one row per variant: size, layers, user, shell, package manager, setuid files, build times
	$(VENV)/bin/python bench/compare.py $(IMAGE)
