# The instruments' targets, which the Makefile pulls in with `-include proof/proof.mk`: lint and scan, measure, break
# and compare the template, each with the virtual environment it needs. They read the shipped files and vary them
# only through build args, environment and config files of their own (proof/bench/).

.PHONY: scan bench drills compare k8s-validate

# The instruments import the template's shared test modules (tests/) and their own (proof/, as a package).
PROOF_PATH := PYTHONPATH=$(CURDIR):$(CURDIR)/tests

# `make venv` and `make test` install these too while proof/ exists.
venv test: $(VENV)/.fuzz-installed $(VENV)/checkov/bin/checkov $(VENV)/scan/.installed

# schemathesis and hypothesis, for the bad-input drill: compiled with tests/requirements.txt as constraints, so they
# share the tests' virtual environment.
$(VENV)/.fuzz-installed: proof/drills/requirements-fuzz.txt $(VENV)/.installed
	$(VENV)/bin/pip install --quiet --require-hashes -r proof/drills/requirements-fuzz.txt
	touch $@

# checkov pins packaging<24 and pytest needs >=24: it gets a virtual environment of its own.
$(VENV)/checkov/bin/checkov: proof/scan/requirements-checkov.txt | $(VENV)/.installed
	python3 -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/pip install --quiet --require-hashes -r proof/scan/requirements-checkov.txt
	touch $@

# The scanners get one too: cyclonedx-bom needs a newer cyclonedx-python-lib than checkov pins.
$(VENV)/scan/.installed: .github/requirements-lint.txt | $(VENV)/.installed
	python3 -m venv $(VENV)/scan
	$(VENV)/scan/bin/pip install --quiet --require-hashes -r .github/requirements-lint.txt
	touch $@

scan: build $(VENV)/scan/.installed $(VENV)/checkov/bin/checkov ## lint and scan offline: hadolint, checkov, yamllint, actionlint, SBOMs in build/sbom/, secrets, vulnerabilities
	$(PROOF_PATH) $(VENV)/scan/bin/python -m proof.scan.scan --image-repository $(IMAGE)

bench: $(VENV)/.installed ## measure worker models, images and both ceilings side by side; writes docs/benchmarks.md
	$(PROOF_PATH) $(VENV)/bin/python -m proof.bench.bench

drills: build $(VENV)/.fuzz-installed ## break the slim image on purpose (kills, outages, full disk, backups, bad input...); writes docs/drills.md
	$(PROOF_PATH) $(VENV)/bin/python -m proof.drills $(IMAGE):$(firstword $(VARIANTS))

compare: build $(VENV)/.installed ## one row per variant: size, layers, user, shell, package manager, setuid files, build times
	$(PROOF_PATH) $(VENV)/bin/python -m proof.bench.compare $(IMAGE)

k8s-validate: $(VENV)/.installed $(VENV)/scan/.installed $(VENV)/checkov/bin/checkov ## render both Kubernetes overlays, and the default one with each component, and check them offline: schemas, immutable fields, checkov
	$(PYTEST) tests/test_k8s.py tests/test_k8s_components.py tests/test_cluster.py proof/tests/test_k8s_policies.py \
	  proof/tests/test_kube.py -m "not docker and not cluster"
	$(PROOF_PATH) $(VENV)/scan/bin/python -m proof.scan.scan --only checkov

# ---------------------------------------------------------------------------------------------------------------
# Mutation testing (proof/mutate/): cosmic-ray changes MUTATE_FILES one mutant at a time, in copies of the
# repository, and runs the tests of MUTATE_TESTS that ran the mutated function. An hour or more on 2 cores, so
# neither make test nor CI runs it, like bench.
MUTATE_FILES ?= app.py serving.py
MUTATE_TESTS ?= tests/test_app.py tests/test_gunicorn.py tests/test_metrics.py tests/test_hostile.py tests/test_outages.py
MUTATE = $(PROOF_PATH) $(VENV)/mutate/bin/python proof/mutate/mutate.py --files $(MUTATE_FILES) --tests $(MUTATE_TESTS)

# The tests' pins, cosmic-ray and coverage, in a virtual environment of their own.
$(VENV)/mutate/.installed: proof/mutate/requirements-mutate.txt tests/requirements.txt
	python3 -m venv $(VENV)/mutate
	$(VENV)/mutate/bin/pip install --quiet --require-hashes -r tests/requirements.txt \
	  -r proof/mutate/requirements-mutate.txt
	touch $@

.PHONY: mutate mutate-report mutate-survivors
mutate: $(VENV)/mutate/.installed ## mutation-test the serving code against its tests, 2 mutants at once; writes docs/mutation.md
	$(MUTATE)

mutate-report: $(VENV)/mutate/.installed ## rewrite docs/mutation.md from the last make mutate, after judging its survivors
	$(MUTATE) --report-only

mutate-survivors: $(VENV)/mutate/.installed ## after adding tests for the gaps: test the last run's survivors again, only them
	$(MUTATE) --survivors
