"""The Kubernetes manifests, rendered, as fixtures: each overlay alone, and the default one with each optional
component. A conftest.py imports them; render() is cached, so each rendering runs kustomize once a session."""

import functools

import project
import pytest
import yaml
from project import DEFAULT_VARIANT, VARIANTS, components

# Every optional kustomize component in k8s/components/, each added to an overlay by a user's own kustomization.
COMPONENTS = components()


@functools.cache
def render(overlay: str, added: tuple[str, ...] = ()) -> str:
    """An overlay with components added, as k8s/README.md shows, rendered once per session (tests/project.py)."""
    try:
        return project.render(overlay, added)
    except project.RendererMissing:
        pytest.skip("neither kubectl nor kustomize is on PATH: the manifests cannot be rendered")


@pytest.fixture(scope="module", params=VARIANTS)
def overlay(request) -> str:
    """Each variant's overlay in k8s/overlays/, rendered by the fixtures below (tests/test_k8s*.py)."""
    return request.param


@pytest.fixture(scope="module")
def rendered(overlay) -> str:
    return render(overlay)


@pytest.fixture(scope="module")
def manifests(rendered) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


@pytest.fixture(scope="module", params=[*((variant, ()) for variant in VARIANTS),
                                        *((DEFAULT_VARIANT, (component,)) for component in COMPONENTS)],
                ids=lambda rendering: "+".join([rendering[0], *rendering[1]]))
def every_rendering(request) -> list[dict]:
    """What a user can apply: each overlay alone, and the default one with each component (tests/test_k8s.py's
    gates); the overlays differ only in the image tag."""
    overlay, added = request.param
    return [doc for doc in yaml.safe_load_all(render(overlay, added)) if doc]
