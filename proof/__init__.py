"""The instruments that prove the template: bench, drills, scans, the CIS checks, the manifests' immutable-field check
and the agreement checks between files, with their own tests in proof/tests/. The template never imports, includes,
mounts or reads anything here; these import the template's shared test modules (tests/) and vary the shipped files
only through build args, environment and config files of their own. Deleting this folder leaves a green `make test`."""
