# The images this project builds on or runs beside, by their upstream names: the one home of these references.
# The Makefile includes this file, tools/project.py reads it, and Renovate (.github/renovate.json) pins each one by
# digest (name:tag@sha256:...) and keeps that digest current, in this file and in every copy that must agree with
# it: the Dockerfiles' ARG defaults, compose.yaml and k8s/ (tests/test_project.py names any copy left behind). A
# new tag is a change by hand, in all of them at once.
# `?=`: a value from the environment, the command line or .ci/airgap.mk (included before this file) wins.
PYTHON_IMAGE ?= python:3.13-slim-trixie
BUILD_IMAGE ?= debian:trixie-slim
DISTROLESS_IMAGE ?= gcr.io/distroless/python3-debian13:nonroot
POSTGRES_IMAGE ?= postgres:17-trixie
# Not a base: the Prometheus of compose.yaml's observability profile.
PROMETHEUS_IMAGE ?= prom/prometheus:v3.14.0
