"""The rendered manifests' offline checks that no cluster makes: the offline gates fed broken copies, to prove they
fail for the right reason; the disruption budgets' fields; no generated name or image tag in an immutable field,
which a cluster shows only on a later apply that changes it. tests/test_k8s.py holds the manifests' other checks;
the restricted profile, the network paths and drains are checked live, on a real cluster (tests/test_cluster.py).
"""

import copy

import pytest
import yaml
from manifests import find, labels_match, named, workloads
from project import IMAGE, KUBERNETES_VERSIONS
from test_k8s import api_version_errors, schema_errors


def gate_problems(doc: dict) -> list[str]:
    """Everything the offline gates find wrong with one rendered object."""
    found = api_version_errors(doc)
    for version in KUBERNETES_VERSIONS:
        found += schema_errors(doc, version)
    return found


@pytest.fixture
def web_deployment(manifests) -> dict:
    deployment = copy.deepcopy(find(manifests, "Deployment", "web"))
    assert gate_problems(deployment) == []
    return deployment


def test_the_schema_gate_rejects_a_misspelled_field(web_deployment):
    container = web_deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    assert gate_problems(web_deployment) == [
        f"Deployment/web fails the Kubernetes {version} schema at spec.template.spec.containers.0: "
        "Additional properties are not allowed ('readinesProbe' was unexpected)"
        for version in KUBERNETES_VERSIONS
    ]


def test_the_gates_reject_a_removed_beta_api(web_deployment):
    web_deployment["apiVersion"] = "extensions/v1beta1"
    assert gate_problems(web_deployment) == [
        "Deployment/web uses extensions/v1beta1, which is not in the GA allowlist",
        *(f"Deployment/web: Couldn't find schema for kind Deployment with api version extensions/v1beta1 "
          f"for kubernetes version {version}" for version in KUBERNETES_VERSIONS),
    ]


def test_every_pdb_covers_a_pod_and_lets_a_drain_evict_the_unhealthy_ones(every_rendering):
    # That a drain evicts web's pods one at a time is checked live; a failing pod not blocking it is not.
    for budget in (doc for doc in every_rendering if doc["kind"] == "PodDisruptionBudget"):
        assert any(labels_match(budget["spec"]["selector"], template["metadata"]["labels"])
                   for _, template in workloads(every_rendering)), f"{named(budget)} covers no pod"
        assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow", named(budget)


def immutable_references(manifests: list[dict]) -> list[str]:
    """Generated names (kustomize's hashed ConfigMaps and Secrets) and image tags held in fields Kubernetes refuses
    to change: a Job's pod template, a StatefulSet's selector and claim templates. The next `kubectl apply` after a
    configuration change, a password rotation or an overlay switch would fail on them with `field is immutable`."""
    generated = {doc["metadata"]["name"] for doc in manifests if doc["kind"] in {"ConfigMap", "Secret"}}
    fields = [(named(doc), doc["spec"]["template"]) for doc in manifests if doc["kind"] == "Job"]
    fields += [(named(doc), [doc["spec"]["selector"], doc["spec"].get("volumeClaimTemplates", [])])
               for doc in manifests if doc["kind"] == "StatefulSet"]
    found = []
    for where, value in fields:
        text = yaml.safe_dump(value)
        found += [f"{where} names {name}" for name in sorted(generated) if name in text]
        if f"image: {IMAGE}" in text:
            found.append(f"{where} names the image {IMAGE}")
    return found


def test_no_immutable_field_names_a_generated_object_or_an_image_tag(every_rendering):
    assert immutable_references(every_rendering) == []


def test_a_job_reading_the_generated_configmap_would_be_found(manifests):
    job = {"kind": "Job", "metadata": {"name": "db-migrate"},
           "spec": {"template": find(manifests, "Deployment", "web")["spec"]["template"]}}
    found = immutable_references([*manifests, job])
    configmap, secret = (find(manifests, kind, name)["metadata"]["name"]
                         for kind, name in (("ConfigMap", "web"), ("Secret", "db-password")))
    assert found == sorted([f"Job/db-migrate names {configmap}", f"Job/db-migrate names {secret}"]) + [
        f"Job/db-migrate names the image {IMAGE}"]
