"""The fixtures the instruments' tests share with the template's: thin wrappers over the same modules in tests/."""

import containers
import docker
import project
import pytest
from renderings import every_rendering, manifests, overlay, rendered  # noqa: F401

project.export_images()


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """Both variants, built by `make build` from a copy of the repository with secrets planted in it (as tests/'s
    fixture of the same name builds them; the second build of a `make test` comes from the layer cache)."""
    return containers.build_images(tmp_path_factory.mktemp("context"))


@pytest.fixture(scope="session")
def docker_client():
    client = docker.from_env()
    yield client
    client.close()
