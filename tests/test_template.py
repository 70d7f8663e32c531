"""The template a team keeps: everything the README's "safe to delete" list names is deleted from a copy of the
repository, and what is left still passes its fast checks, and `make up` and `make build` still know what to run.
The list is read from the README, so the README and this test cannot disagree."""

import re
import shutil
import subprocess
import sys

import pytest
from containers import learner_environment
from project import ROOT, copy_repository, make_values

# The fast checks, as `make check` selects them: no image build, no Compose stack, no cluster, no nested pytest.
FAST = "not docker and not slow and not cluster and not nested"


def safe_to_delete(readme):
    """The paths (globs) the README's list between its `safe to delete` markers names, each before its colon."""
    listed = re.search(r"<!-- safe to delete.*?-->\n(.*?)<!-- /safe to delete -->", readme, re.S)[1]
    return [path for line in listed.splitlines() if line.strip().startswith("- ")
            for path in re.findall(r"`([^`]+)`", line.split(": ", 1)[0])]


def test_the_readme_lists_the_instruments_ci_optional_components_and_the_runs_figures_as_safe_to_delete():
    assert safe_to_delete((ROOT / "README.md").read_text()) == [
        "proof/", ".ci/", "k8s/components/*", "docs/benchmarks.md", "docs/drills.md", "docs/mutation.md"]


@pytest.mark.nested
def test_deleting_what_the_readme_calls_safe_to_delete_keeps_the_fast_checks_and_make_up_and_build_working(tmp_path):
    copy = copy_repository(tmp_path)
    deleted = [path for pattern in safe_to_delete((ROOT / "README.md").read_text())
               for path in copy.glob(pattern.rstrip("/"))]
    assert deleted, "the README's list named nothing that exists"
    for path in deleted:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    # A team's own repository from here on: the tests that copy it ask git what it holds.
    for command in (["init", "-q"], ["add", "-A"], ["-c", "user.name=team", "-c", "user.email=team@example.test",
                                                     "commit", "-q", "-m", "our service"]):
        subprocess.run(["git", *command], cwd=copy, check=True, capture_output=True)
    # Without .ci/, make would name the upstream images: this machine reaches no registry, so the copy is run as a
    # team with a mirror runs it, the images' variables set (here to what make uses in this repository).
    env = {**learner_environment(), **make_values()}
    checks = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", "-m", FAST],
                            cwd=copy, capture_output=True, text=True, timeout=900, env=env)
    assert checks.returncode == 0, checks.stdout[-4000:] + checks.stderr[-2000:]
    assert re.search(r"\d+ passed", checks.stdout), checks.stdout[-2000:]
    dry_run = subprocess.run(["make", "--no-print-directory", "-n", "up", "build"], cwd=copy, capture_output=True,
                             text=True, env=env)
    assert dry_run.returncode == 0, dry_run.stderr
    assert "up --build --wait" in dry_run.stdout and "docker build" in dry_run.stdout
