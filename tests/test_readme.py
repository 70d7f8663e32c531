"""Every `sh` block of README.md, run as a learner runs it, in a copy of the repository: each command must succeed,
and the `# ` lines under a command are what it prints (`...` stands for any text: a time, an id, a list).

Each block runs in a Compose project of its own, on free ports and under an image name of its own, so a run never
touches a developer's stack, port 8000 or images: the blocks' fixed names are swapped for those, and nothing else.
"""

import re
import shutil
import subprocess
import uuid

import pytest
import requests
from conftest import REPOSITORY, copy_repository, free_port, wait_until
from containers import learner_environment
from project import IMAGE

pytestmark = pytest.mark.docker

README = REPOSITORY / "README.md"


def shell_blocks():
    """Each ```sh block's lines, in the README's order."""
    return [block.splitlines() for block in re.findall(r"^```sh\n(.*?)^```$", README.read_text(), re.M | re.S)]


def commands(block):
    """(command, the lines it is expected to print) for each line of a block that is not a `# ` line."""
    steps = []
    for line in block:
        if line.startswith("# "):
            steps[-1][1].append(line[2:])
        else:
            steps.append((line, []))
    return steps


def matches(expected, printed):
    pattern = ".*?".join(re.escape(part) for part in "\n".join(expected).split("..."))
    return re.fullmatch(pattern, printed.strip(), re.S) is not None


class Learner:
    """A shell in a copy of the repository, in a Compose project, on ports and with an image name of its own."""

    def __init__(self, copy):
        self.copy = copy
        self.ports = {8000: free_port(), 9090: free_port()}
        self.image = f"{IMAGE}-test-readme"
        self.environment = {**learner_environment(), "COMPOSE_PROJECT_NAME": f"{self.image}-{uuid.uuid4().hex[:8]}",
                            "WEB_PORT": str(self.ports[8000]), "PROMETHEUS_PORT": str(self.ports[9090]),
                            "IMAGE": self.image}

    def own(self, text):
        for port, own in self.ports.items():
            text = re.sub(rf"127\.0\.0\.1:{port}(?=[:/])", f"127.0.0.1:{own}", text)
        text = text.replace(f"{IMAGE}:", f"{self.image}:")
        return re.sub(r"(--name|rm -f) hello\b", rf"\1 {self.image}-hello", text)

    def run(self, block):
        for command, expected in commands(block):
            if command.startswith("bash .ci/run ") and not (REPOSITORY / ".ci" / "airgap.mk").exists():
                continue  # the setup step of a machine without a registry: this one has one
            command = self.own(command)
            for url in re.findall(r"http://127\.0\.0\.1:\d+/", command.split("  # ")[0]):
                # As a learner reads the last line before typing the next: a container just started answers soon.
                wait_until(lambda url=url: requests.get(url, timeout=2) is not None, timeout=60,
                           what=f"{url} to answer")
            done = subprocess.run(["bash", "-c", command], cwd=self.copy, env=self.environment,
                                  capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            assert not expected or matches(expected, done.stdout), f"{command}\nprinted: {done.stdout}"

    def make(self, *arguments):
        return subprocess.run(["make", "--no-print-directory", *arguments], cwd=self.copy, env=self.environment,
                              capture_output=True, text=True, timeout=600)


@pytest.fixture
def learner(tmp_path):
    copy = copy_repository(tmp_path / "copy")
    if (REPOSITORY / ".ci" / "airgap.mk").exists():  # ignored by git, so copied only by the setup step itself
        shutil.copy(REPOSITORY / ".ci" / "airgap.mk", copy / ".ci" / "airgap.mk")
    learner = Learner(copy)
    yield learner
    learner.make("clean", "FORCE=1")
    subprocess.run(["docker", "rm", "-f", f"{learner.image}-hello"], capture_output=True)


def block(first_command):
    [found] = [lines for lines in shell_blocks() if lines[0].startswith(first_command)]
    return found


RUNS = {"quick start": "bash .ci/run", "the module's lesson": "make build", "the API": "curl -H",
        "Prometheus": "COMPOSE_PROFILES=observability make up"}


def test_every_shell_block_of_the_readme_is_one_these_tests_run():
    runs = [[name for name, start in RUNS.items() if lines[0].startswith(start)] for lines in shell_blocks()]
    assert sorted(name for names in runs for name in names) == sorted(RUNS) and all(len(names) == 1 for names in runs)


def test_the_quick_start_runs_as_written_and_prints_what_it_shows(learner):
    learner.run(block(RUNS["quick start"]))


def test_the_modules_lesson_builds_runs_and_greets_by_the_name_given(learner):
    learner.run(block(RUNS["the module's lesson"]))


def test_the_api_examples_answer_as_shown_once_make_up_has_run(learner):
    up = learner.make("up")
    assert up.returncode == 0, up.stdout + up.stderr
    learner.run(block(RUNS["the API"]))


def test_the_prometheus_query_answers_with_the_request_rates(learner):
    learner.run(block(RUNS["Prometheus"]))
