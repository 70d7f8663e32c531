"""The project's shared facts, each read from the one file that defines it, for the tests and anything else.

Variants, the image name and the images' upstream defaults come from the Makefile, the images make actually uses
(a mirror's, or .ci/'s stand-ins) from make itself; the project's name, the database URL and the migrate command
from compose.yaml; the Kubernetes namespace from k8s/base/kustomization.yaml.
render() renders the Kubernetes manifests; copy_repository() copies the working tree for a test to change.
"""

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def make_default(name, root=ROOT):
    """A variable as the Makefile writes it (`NAME ?= value`, `:=` or `=`): its first line."""
    found = re.search(rf"^{name} [?:]?= *(.*)$", (root / "Makefile").read_text(), re.M)
    if not found:
        raise LookupError(f"Makefile: no `{name} ?=` line")
    return found[1].strip()


IMAGE = make_default("IMAGE")  # the repository that `make build` tags, Compose runs and k8s/ deploys
VARIANTS = tuple(make_default("VARIANTS").split())
DEFAULT_VARIANT = VARIANTS[0]
BASE_VARIABLES = ("PYTHON_IMAGE", "BUILD_IMAGE", "DISTROLESS_IMAGE", "POSTGRES_IMAGE")


def dockerfile(variant):
    """The default variant builds from Dockerfile, every other from Dockerfile.<variant>, as compose.yaml reads
    VARIANT and the Makefile names them."""
    return "Dockerfile" if variant == DEFAULT_VARIANT else f"Dockerfile.{variant}"


def base_variable(variant, root=ROOT):
    """The variable naming the image a variant runs on: its Dockerfile labels that image as its base."""
    text = (root / dockerfile(variant)).read_text()
    return re.search(r'org\.opencontainers\.image\.base\.name="\$\{(\w+)\}"', text)[1]


@functools.cache
def make_values(root=ROOT):
    """{NAME: reference} of the images make uses here (`make print-images`): the environment's, the command line's or
    .ci/airgap.mk's when set, else the Makefile's upstream default. A test file run alone thus uses what `make test`
    would."""
    printed = subprocess.run(["make", "--no-print-directory", "-s", "print-images"], cwd=root, capture_output=True,
                             text=True, check=True).stdout
    return dict(line.split("=", 1) for line in printed.splitlines())


def export_images():
    """Sets the images make uses in this process's environment, where not set already, as `make test` exports them:
    a test file run alone with pytest, and every make, Compose and build it starts, then uses the same images."""
    for name, value in make_values().items():
        os.environ.setdefault(name, value)


def base_image(variable):
    """An image as make passes it to builds and Compose: a mirror's, .ci/'s stand-in, or the upstream default."""
    return make_values()[variable]


def copy_repository(destination):
    """The working tree's files that git tracks or would track, copied to `destination`; returns it."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in listed:
        if name and (ROOT / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)
    return destination


POSTGRES_IMAGE = base_image("POSTGRES_IMAGE")
_COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
PROJECT = _COMPOSE["name"]  # the Compose project; `make rename` changes it with IMAGE
# Every object's namespace in k8s/, which its Namespace object creates.
NAMESPACE = yaml.safe_load((ROOT / "k8s" / "base" / "kustomization.yaml").read_text())["namespace"]
DATABASE_URL = _COMPOSE["services"]["web"]["environment"]["DATABASE_URL"]
MIGRATE = _COMPOSE["services"]["migrate"]["command"]  # `flask migrate`, as the web image runs it
# The Kubernetes minor versions the manifests support: validated against each offline (tests/test_k8s.py) and run
# on each in kind (.github/workflows/kubernetes.yml). The oldest is the namespace's Pod Security enforce-version.
KUBERNETES_VERSIONS = ("1.35", "1.36", "1.37")


def components(root=ROOT):
    """The optional kustomize components: each k8s/components/<name>/ with a kustomization.yaml."""
    return tuple(sorted(path.parent.name for path in (root / "k8s" / "components").glob("*/kustomization.yaml")))


def overlay_with_components(overlay, added, directory, root=ROOT):
    """Writes into `directory` the kustomization k8s/README.md shows for adding components to an overlay, with
    relative paths, since kustomize refuses absolute ones; returns `directory`, for `kustomize build`."""
    def relative(path):
        return os.path.relpath(root / "k8s" / path, directory)

    (Path(directory) / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [relative(f"overlays/{overlay}")],
        "components": [relative(f"components/{component}") for component in added],
    }))
    return Path(directory)


class RendererMissing(RuntimeError):
    """Neither kubectl nor kustomize is on PATH: nothing here can render the manifests."""


def render(overlay, added=(), root=ROOT):
    """The manifests of an overlay with components `added`, as `kubectl apply -k` would apply them: its text."""
    if shutil.which("kubectl"):
        command = ["kubectl", "kustomize"]
    elif shutil.which("kustomize"):
        command = ["kustomize", "build"]
    else:
        raise RendererMissing("neither kubectl nor kustomize is on PATH: install either to render k8s/")
    with tempfile.TemporaryDirectory() as scratch:
        result = subprocess.run([*command, str(overlay_with_components(overlay, added, scratch, root))],
                                capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} of {'+'.join([overlay, *added])} failed:\n{result.stderr}")
    return result.stdout


# The service's timing promises, as the README states them: the tests and the drills hold it to these bounds, and an
# agreement check compares them with what gunicorn.conf.py and app.py set.
GRACEFUL_TIMEOUT = 20  # seconds gunicorn lets requests finish after SIGTERM; every grace period must exceed it
KEEPALIVE_SECONDS = 5  # a client has this long to send a request's headers, or to send the next request
BODY_TIMEOUT_SECONDS = 10  # and this long more for its body
DATABASE_WAIT_SECONDS = 0.5  # a request waits this long for a pooled connection, then answers 503
DATABASE_TIMEOUT_SECONDS = 2.0  # and this long for the database's answer, then answers 503


def gunicorn_settings(*names, environment=None, root=ROOT):
    """{name: value} of gunicorn.conf.py's settings as gunicorn would load them under `environment` (default: none of
    the service's variables): the file is run in a process of its own, so nothing it does reaches this one. A name
    may be an attribute of a module the settings import, e.g. `serving.BODY_TIMEOUT_SECONDS`."""
    script = ("import functools, json, runpy, sys; settings = runpy.run_path('gunicorn.conf.py'); "
              "value = lambda name: functools.reduce(getattr, name.split('.')[1:], settings[name.split('.')[0]]); "
              "print(json.dumps({name: value(name) for name in sys.argv[1:]}))")
    with tempfile.TemporaryDirectory() as metrics:
        result = subprocess.run([sys.executable, "-c", script, *names], cwd=root, capture_output=True, text=True,
                                env={"PATH": os.environ["PATH"], "PYTHONPATH": str(root),
                                     "PROMETHEUS_MULTIPROC_DIR": metrics, **(environment or {})}, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"gunicorn.conf.py did not load: {result.stderr}")
    return json.loads(result.stdout)
