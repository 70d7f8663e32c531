"""The project's shared facts, each read from the one file that defines it, for the tests and every tool.

Variants and the image name come from the Makefile, the base-image defaults from the file it includes for them
(tools/base-images.mk); the project's name, the database URL and the migrate command from compose.yaml; the
Kubernetes namespace from k8s/base/kustomization.yaml. tests/test_project.py proves
that every other place that must agree does: the CI matrix, the Kubernetes overlays and manifests, the Dockerfiles
and the README. render() is how the tests and tools/scan render the Kubernetes manifests.
"""

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def included_makefiles(root=ROOT):
    """The files the Makefile always includes (`include FILE`), in order; `-include`d ones are optional overrides,
    such as .ci/airgap.mk, not defaults."""
    return [root / path for path in re.findall(r"^include (\S+)$", (root / "Makefile").read_text(), re.M)]


def make_default(name, root=ROOT):
    """A variable as the Makefile sets it (`NAME ?= value`, `:=` or `=`), its first line, in the Makefile itself or
    in a file it includes."""
    for path in [root / "Makefile", *included_makefiles(root)]:
        found = re.search(rf"^{name} [?:]?= *(.*)$", path.read_text(), re.M)
        if found:
            return found[1].strip()
    raise LookupError(f"Makefile: no `{name} ?=` line, in it or in the files it includes")


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


def base_image(variable):
    """A base image as make passes it (a mirror's, or .ci/'s stand-ins), else the Makefile's upstream default."""
    return os.environ.get(variable) or make_default(variable)


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
