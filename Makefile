# `make` lists the targets. Images come from five variables (four bases and Prometheus), their upstream defaults
# below; .ci/airgap.mk (written by `bash .ci/run --setup-only` on a machine without a registry) points them at local
# stand-ins. A team with a registry mirror sets them in the environment or on make's command line, each to the mirror's
# copy of the same image (the README shows one).
-include .ci/airgap.mk
# `make release-local`: ci.yml's release (both platforms, by digest, signed, SBOMs) against a local registry.
-include .ci/release/release.mk
# The images this project builds on or runs beside, by their upstream names: the one home of these references.
# Renovate (.github/renovate.json) pins each one by digest (name:tag@sha256:...) and keeps that digest current, here
# and in every copy that must agree with it: the Dockerfiles' ARG defaults, compose.yaml and k8s/. A new tag is a
# change by hand, in all of them at once. `?=`: a value from the environment, the command line or .ci/airgap.mk wins.
PYTHON_IMAGE ?= python:3.13-slim-trixie
BUILD_IMAGE ?= debian:trixie-slim
DISTROLESS_IMAGE ?= gcr.io/distroless/python3-debian13:nonroot
POSTGRES_IMAGE ?= postgres:17-trixie
# Not a base: the Prometheus of compose.yaml's observability profile.
PROMETHEUS_IMAGE ?= prom/prometheus:v3.14.0
IMAGE_VARIABLES := PYTHON_IMAGE BUILD_IMAGE DISTROLESS_IMAGE POSTGRES_IMAGE PROMETHEUS_IMAGE
export $(IMAGE_VARIABLES)

VENV ?= .venv
PYTEST := $(VENV)/bin/python -m pytest

.DEFAULT_GOAL := help
.PHONY: help test check venv print-images

# What a day's work uses, listed first by `make help`; the other targets follow in the order they are written.
EVERYDAY := up down logs ps watch psql backup
help: ## list the targets, the everyday ones first
	@awk -v everyday="$(EVERYDAY)" 'BEGIN {FS = ":.*## "; n = split(everyday, first, " ")} \
	  /^[a-z0-9-]+:.*## / {said[$$1] = $$2; if (index(" " everyday " ", " " $$1 " ") == 0) rest[++m] = $$1} \
	  END {for (i = 1; i <= n; i++) printf "  make %-14s %s\n", first[i], said[first[i]]; print ""; \
	       for (i = 1; i <= m; i++) printf "  make %-14s %s\n", rest[i], said[rest[i]]}' $(MAKEFILE_LIST)

venv: $(VENV)/.installed ## create .venv with the pinned test dependencies

$(VENV)/.installed: tests/requirements.txt requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --require-hashes -r tests/requirements.txt
	touch $@

# The instruments that prove the template (bench, drills, scans, agreement checks) live in proof/, with their own
# targets and test folder; a team that deletes proof/ keeps every target below and a green `make test`.
-include proof/proof.mk

test: venv ## run every test: the app against a real Postgres, the images, Compose and Kubernetes manifests
	$(PYTEST) tests $(wildcard proof/tests)

check: venv ## the fast checks, under a minute: no image build, no Compose stack, no cluster
	$(PYTEST) tests -m "not docker and not slow and not cluster and not nested" -q

# The images as make uses them here (upstream, a mirror's, or .ci/'s stand-ins), one NAME=reference a line:
# tests/project.py reads them, so a test file run alone with pytest uses what `make test` would.
print-images:
	@$(foreach name,$(IMAGE_VARIABLES),echo '$(name)=$($(name))';)

IMAGE ?= notes-web
# The image variants, the default first. Each builds from Dockerfile.<variant>, the default from Dockerfile, and
# has an overlay in k8s/overlays/; tests/project.py reads this line for the tests.
VARIANTS := slim distroless
dockerfile = $(if $(filter $(firstword $(VARIANTS)),$1),Dockerfile,Dockerfile.$1)
REVISION := $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
# An image built from uncommitted changes is not that revision: its tag says so, as VERSION (git describe) does.
DIRTY := $(if $(shell git status --porcelain --untracked-files=no 2>/dev/null),-dirty)
VERSION := $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
BUILD_ARGS = --build-arg PYTHON_IMAGE --build-arg BUILD_IMAGE --build-arg DISTROLESS_IMAGE \
  --build-arg REVISION=$(REVISION) --build-arg VERSION=$(VERSION) \
  --build-arg CREATED=$(shell date -u +%Y-%m-%dT%H:%M:%SZ) --build-arg SOURCE=$(SOURCE)
SOURCE ?= $(shell git config --get remote.origin.url 2>/dev/null || echo unknown)

.PHONY: build
build: ## build every variant: notes-web:slim and notes-web:distroless, each also tagged with the git revision
	$(foreach variant,$(VARIANTS),docker build $(BUILD_ARGS) -f $(call dockerfile,$(variant)) \
	  -t $(IMAGE):$(variant) -t $(IMAGE):$(variant)-$(REVISION)$(DIRTY) . &&) true
	@old=$$($(IMAGE_TAGS) | grep -E $(REVISION_TAGS) | grep -vxF $(foreach v,$(VARIANTS),-e $(IMAGE):$(v)-$(REVISION)$(DIRTY))); \
	[ -z "$$old" ] || docker image rm $$old >/dev/null 2>&1 || echo "kept tags a container still runs: $$old"

# The tags of $(IMAGE): `make build` writes <variant> and <variant>-<revision>, keeping one revision per variant;
# each Compose stack writes its own <variant>-<project> (compose.yaml).
IMAGE_TAGS = docker image ls --format '{{.Repository}}:{{.Tag}}' $(IMAGE)
REVISION_TAGS = $(foreach v,$(VARIANTS),-e ':$(v)-([0-9a-f]{40}|unknown)(-dirty)?$$')

# ---------------------------------------------------------------------------------------------------------------
# The stack on this machine, from compose.yaml: VARIANT=distroless runs the distroless image, WEB_PORT moves the
# published port, COMPOSE_PROJECT_NAME runs a second, separate stack.
COMPOSE ?= docker compose
# Every service, whichever profiles are on: `down` must also stop the Prometheus an observability `up` started.
COMPOSE_ALL = $(COMPOSE) --profile '*'
WEB_PORT ?= 8000
PROMETHEUS_PORT ?= 9090
comma := ,
DEBUG_IMAGE ?= $(PYTHON_IMAGE)
OBSERVING = $(filter observability,$(subst $(comma), ,$(COMPOSE_PROFILES)))
# Checked before anything runs: a wrong value would otherwise surface as a BuildKit path or a port "in use".
ifneq ($(filter-out $(VARIANTS),$(or $(VARIANT),$(firstword $(VARIANTS)))),)
$(error VARIANT=$(VARIANT) is not a variant: use one of $(VARIANTS), e.g. make up VARIANT=distroless)
endif
port_number = $(shell [ "$($1)" -ge 1 ] 2>/dev/null && [ "$($1)" -le 65535 ] && echo ok)
ifeq ($(call port_number,WEB_PORT),)
$(error WEB_PORT=$(WEB_PORT) is not a port number: use one from 1 to 65535, e.g. make up WEB_PORT=8081)
endif
ifeq ($(call port_number,PROMETHEUS_PORT),)
$(error PROMETHEUS_PORT=$(PROMETHEUS_PORT) is not a port number: use one from 1 to 65535, e.g. PROMETHEUS_PORT=9091)
endif
# compose.yaml reads an unset VARIANT as slim; "slim" itself would name a Dockerfile.slim, which does not exist.
ifeq ($(VARIANT),slim)
override VARIANT :=
endif
# compose.yaml reads IMAGE and WEB_PORT too, so the stack runs the images `make build` tags, on the port `make up`
# prints; it passes the others to its build, so an image from `make up` is labelled like one from `make build`.
export IMAGE WEB_PORT PROMETHEUS_PORT REVISION VERSION SOURCE
# compose.yaml's secret db_password; `make up` creates it when missing.
DB_PASSWORD_FILE := secrets/db_password.txt

.PHONY: up down logs ps watch migrate backup restore clean psql debug rename check-engine check-port
up: check-engine check-port $(DB_PASSWORD_FILE) ## build, start, wait until healthy (VARIANT=distroless, WEB_PORT=8081, COMPOSE_PROFILES=observability)
	@$(COMPOSE) up --build --wait --wait-timeout 180 || { status=$$?; $(FAILED_LOGS); $(MISSING_BASES); exit $$status; }
	@# The image a code change replaced keeps no tag; Compose labelled it with the project, as `make watch` prunes it.
	@docker image prune --force --filter label=com.docker.compose.project=$$($(PROJECT)) >/dev/null
	@echo "web: http://127.0.0.1:$(WEB_PORT)/"
	$(if $(OBSERVING),@echo "prometheus: http://127.0.0.1:$(PROMETHEUS_PORT)/ (web's metrics: http_requests_total, db_pool_connections ...)")
	@echo "try: curl -H 'Content-Type: application/json' -d '{\"text\": \"hello\"}' http://127.0.0.1:$(WEB_PORT)/api/notes"

down: check-engine ## stop and remove the containers; the notes stay in the db_data volume
	$(COMPOSE_ALL) down

logs: check-engine ## follow every service's log (migrate's stays readable after it exits)
	$(COMPOSE_ALL) logs --follow --tail=100

ps: check-engine ## list the stack's containers with their health, and migrate's exit code
	$(COMPOSE_ALL) ps --all

# After `make up`, so migrate has run and the stack outlives the watching.
watch: up ## make up, then rebuild web and re-run migrate on each code change; Ctrl-C stops watching, not the stack
	@echo "watching the files compose.yaml's develop.watch names; Ctrl-C stops watching, make down the stack"
	@# The shell outlives Ctrl-C (a trap, not an ignore, so Compose still gets it) and reports the stop as it is.
	@trap true INT; $(COMPOSE) watch --no-up --quiet; status=$$?; \
	if [ $$status -eq 130 ]; then echo "stopped watching; the stack is still up (make down stops it)"; \
	else exit $$status; fi

# Any newer migration in the image web runs: after `make watch` rebuilt it, as `make up` runs migrate first.
migrate: check-engine $(DB_PASSWORD_FILE) ## apply the image's schema migrations to the running stack's database
	$(COMPOSE) run --rm migrate

# backup.py runs pg_dump and pg_restore inside db; python3 is all it needs on this machine.
BACKUP = COMPOSE="$(COMPOSE)" python3 backup.py
# Where `make backup` writes: ignored by git, and only you may enter it.
BACKUP_DIR ?= backups
ifneq ($(filter restore,$(MAKECMDGOALS)),)
ifeq ($(FILE),)
$(error FILE is not set: name the archive to restore, e.g. make restore FILE=$(or $(lastword $(sort $(wildcard $(BACKUP_DIR)/*.dump))),$(BACKUP_DIR)/notes-20261203T101500Z.dump))
endif
endif

backup: check-engine ## pg_dump the running stack's database into backups/, named by UTC time; prints path, size, notes
	@$(BACKUP) backup --into $(BACKUP_DIR)

restore: check-engine ## replace the running stack's notes with FILE's, checked first, in one transaction; asks unless FORCE=1
	@$(BACKUP) restore --backups $(BACKUP_DIR) $(if $(filter 1,$(FORCE)),--yes) -- "$(FILE)"

clean: check-engine ## delete the containers, volume db_data (every note), this stack's and make build's images; asks unless FORCE=1
	@if [ "$(FORCE)" != 1 ]; then \
	  printf 'Delete every note (volume db_data) and the $(IMAGE) images of this stack and make build? [y/N] '; \
	  read -r answer; case "$$answer" in y|Y|yes|Yes|YES) ;; *) echo "nothing deleted"; exit 0 ;; esac; \
	fi; \
	project=$$($(PROJECT)); $(COMPOSE_ALL) down --volumes --remove-orphans \
	&& tags=$$($(IMAGE_TAGS) | grep -E $(REVISION_TAGS) $(foreach v,$(VARIANTS),-e ':$(v)(-'"$$project"')?$$')); \
	[ -z "$$tags" ] || docker image rm $$tags

psql: check-engine ## open psql in db; no port is published, so it goes through `docker compose exec`
	@# The root filesystem is read-only: psql keeps its history in db's /tmp, until db is recreated.
	$(COMPOSE) exec --env PSQL_HISTORY=/tmp/psql_history db psql --username=notes --dbname=notes

# The distroless image has no shell, so `docker compose exec web sh` fails. This starts one in another container
# that joins web's process and network namespaces, as web's own uid: the kernel then lets it read web's files
# through /proc/1/root and its environment through /proc/1/environ, with no extra capability.
debug: check-engine ## open a shell beside the running web container, which has none in the distroless variant
	@id=$$($(COMPOSE) ps --format "{{.Name}}" web); \
	[ -n "$$id" ] || { echo "error: web is not running; start it with make up" >&2; exit 1; }; \
	printf '%s\n' "A $(DEBUG_IMAGE) shell in web's process and network namespaces, as uid 65532. Try:" \
	  "  ls -l /proc/1/root/app                 web's files (PID 1 is gunicorn)" \
	  "  tr '\0' '\n' < /proc/1/environ         its environment" \
	  "  python3 -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1:8000/readyz').read())\"" \
	  "From outside, even when web has exited: docker cp $$id:/app/app.py .   docker export $$id | tar -t"; \
	docker run --rm --interactive $$([ -t 0 ] && echo --tty) --user 65532:65532 --cap-drop ALL \
	  --security-opt no-new-privileges --pid container:$$id --network container:$$id $(DEBUG_IMAGE) sh

# A copy of this repository becomes your project: rename.py says what it changes, and what it leaves.
rename: ## rename the project in every file: image, Compose project, labels, app and k8s namespace (NAME=acme-api)
	@python3 rename.py $(NAME)

check-engine:
	@out=$$(docker info 2>&1 >/dev/null) || case "$$out" in \
	  *"permission denied"*) echo "error: permission denied on the Docker socket: add yourself to the docker group" \
	    "(sudo usermod -aG docker $$(id -un), then log in again), knowing that its members can become root" >&2; exit 1 ;; \
	  *) echo "error: no Docker engine answers: start Docker, then check with docker info" >&2; exit 1 ;; esac
	@$(COMPOSE) version >/dev/null 2>&1 \
	  || { echo "error: Compose v2 is missing ('$(COMPOSE) version' fails): install the Compose plugin" >&2; exit 1; }

# A failed `make up` shows why: the last lines of each service that exited with an error or is not healthy.
FAILED_LOGS = $(COMPOSE) ps --all --format '{{.Service}}|{{.State}}|{{.Health}}|{{.ExitCode}}' \
  | awk -F'|' '!(($$2 == "running" && $$3 ~ /^(healthy)?$$/) || ($$2 == "exited" && $$4 == 0)) {print $$1}' \
  | while read -r service; do echo "--- $$service is $$($(COMPOSE) ps --all --format '{{.Status}}' $$service);" \
      "its last lines (make logs shows all):" >&2; $(COMPOSE) logs --no-log-prefix --tail=15 $$service >&2; done

# A failed `make up` whose images are neither here nor pullable (a fresh clone on a machine without a registry)
# says what to do, after Compose's own words, which name only a host it could not reach.
BASES = $(POSTGRES_IMAGE) $(if $(VARIANT),$(BUILD_IMAGE) $(DISTROLESS_IMAGE),$(PYTHON_IMAGE))
MISSING_BASES = missing=$$(for image in $(BASES); do \
    docker image inspect "$$image" >/dev/null 2>&1 || echo "$$image"; done); \
  [ -z "$$missing" ] \
  || echo "error: neither on this machine nor pulled:" $$missing "- without a registry, run bash .ci/run --setup-only" \
          "first; behind a mirror, name its images (make up POSTGRES_IMAGE=mirror.example/postgres:17-trixie ...)" >&2

# The Compose project's name: compose.yaml's `name:`, or COMPOSE_PROJECT_NAME when set.
PROJECT = $(COMPOSE) config --format json 2>/dev/null | python3 -c 'import json, sys; print(json.load(sys.stdin)["name"])' 2>/dev/null

# Each port `up` publishes is free, or already published by this stack's own service (a second `make up` must not
# fail on its own port): $(call port_free,SERVICE,ITS PORT,VARIABLE,ANOTHER PORT).
BINDS = python3 -c 'import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); \
                    s.bind(("127.0.0.1", int(sys.argv[1])))'
port_free = [ "$$($(COMPOSE) port $1 $2 2>/dev/null)" = "127.0.0.1:$($3)" ] || $(BINDS) $($3) 2>/dev/null \
  || { echo "error: port $($3) on 127.0.0.1 is in use: pick another, e.g. make up $3=$4" >&2; exit 1; }
check-port:
	@$(call port_free,web,8000,WEB_PORT,8081)
	$(if $(OBSERVING),@$(call port_free,prometheus,9090,PROMETHEUS_PORT,9091))

# Random, and ignored by git. Compose bind-mounts a file secret with the host file's owner and mode (its uid, gid
# and mode options need Swarm), so the file is 644 for web's uid 65532 and db's 999; the 700 directory keeps
# other users of this machine out. Postgres reads the password only when it fills an empty volume, so a new one
# beside this project's existing db_data would be refused: then nothing is created or started.
$(DB_PASSWORD_FILE):
	@project=$$($(PROJECT)); \
	if [ -n "$$(docker volume ls --quiet --filter label=com.docker.compose.project=$$project \
	                                     --filter label=com.docker.compose.volume=db_data)" ]; then \
	  echo "error: $@ is missing, but volume db_data of project $$project holds a database set up with the old" \
	    "password: put the old file back, or delete every note with make clean" >&2; exit 1; fi
	@mkdir -p $(@D) && chmod 700 $(@D)
	@umask 022 && python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > $@
	@echo "created $@: a random password, ignored by git"
