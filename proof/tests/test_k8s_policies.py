"""The rendered manifests judged by proof/kube.py's engines, as a cluster's admission and network would judge them:
the Pod Security Standards restricted profile (the namespace enforces it), the offline gates fed broken copies to
prove they fail for the right reason, drains under the disruption budgets, immutable fields, and the network paths
the NetworkPolicies let through. tests/test_k8s.py holds the manifests' other checks.
"""

import copy

import pytest
from manifests import find, labels_match, named, pod_template, workloads
from project import IMAGE, KUBERNETES_VERSIONS, NAMESPACE
from test_k8s import api_version_errors, schema_errors
from test_k8s_components import manifests_with, only_with

from proof.kube import (
    Peer,
    connection_allowed,
    evictions_allowed,
    fewest_replicas,
    immutable_references,
    restricted_profile_violations,
)


def admission_problems(doc: dict) -> list[str]:
    """Everything the offline gates find wrong with one rendered object."""
    found = api_version_errors(doc)
    for version in KUBERNETES_VERSIONS:
        found += schema_errors(doc, version)
    if template := pod_template(doc):
        found += [f"{named(doc)} breaks the restricted profile: {violation}"
                  for violation in restricted_profile_violations(template)]
    return found


def test_every_pod_template_meets_the_restricted_profile(every_rendering):
    violations = {named(doc): restricted_profile_violations(template)
                  for doc, template in workloads(every_rendering)}
    assert violations and violations == {name: [] for name in violations}


@pytest.fixture
def web_deployment(manifests) -> dict:
    deployment = copy.deepcopy(find(manifests, "Deployment", "web"))
    assert admission_problems(deployment) == []
    return deployment


def test_admission_rejects_a_pod_that_may_run_as_root(web_deployment):
    web_deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] = False
    assert admission_problems(web_deployment) == [
        "Deployment/web breaks the restricted profile: spec.securityContext.runAsNonRoot is false",
        "Deployment/web breaks the restricted profile: container migrate does not run with runAsNonRoot: true",
        "Deployment/web breaks the restricted profile: container web does not run with runAsNonRoot: true",
    ]


def test_admission_rejects_a_privileged_container(web_deployment):
    web_deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] = True
    assert admission_problems(web_deployment) == [
        "Deployment/web breaks the restricted profile: container web securityContext.privileged is true",
    ]


def test_admission_rejects_a_misspelled_field(web_deployment):
    container = web_deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    assert admission_problems(web_deployment) == [
        f"Deployment/web fails the Kubernetes {version} schema at spec.template.spec.containers.0: "
        "Additional properties are not allowed ('readinesProbe' was unexpected)"
        for version in KUBERNETES_VERSIONS
    ]


def test_admission_rejects_a_removed_beta_api(web_deployment):
    web_deployment["apiVersion"] = "extensions/v1beta1"
    assert admission_problems(web_deployment) == [
        "Deployment/web uses extensions/v1beta1, which is not in the GA allowlist",
        *(f"Deployment/web: Couldn't find schema for kind Deployment with api version extensions/v1beta1 "
          f"for kubernetes version {version}" for version in KUBERNETES_VERSIONS),
    ]


def test_every_pdb_lets_a_drain_evict_a_pod_and_let_unhealthy_ones_go(every_rendering):
    # A budget no eviction can satisfy blocks `kubectl drain` and managed node-group upgrades for good.
    for budget in (doc for doc in every_rendering if doc["kind"] == "PodDisruptionBudget"):
        covered = [doc for doc, template in workloads(every_rendering)
                   if labels_match(budget["spec"]["selector"], template["metadata"]["labels"])]
        assert covered, f"{named(budget)} covers no pod"
        for workload in covered:
            assert evictions_allowed(budget, fewest_replicas(every_rendering, workload)) >= 1, named(workload)
        assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


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


# ---------------------------------------------------------------------------------------------------------
# Network policies, evaluated: which connections the rendered policies let through

WEB = Peer(NAMESPACE, {"app.kubernetes.io/name": "web"})
DB = Peer(NAMESPACE, {"app.kubernetes.io/name": "db"})
OTHER_POD = Peer(NAMESPACE, {"app.kubernetes.io/name": "debug"})
DNS = Peer("kube-system", {"k8s-app": "kube-dns"})
# Resolvers on the node, which no pod selector matches: NodeLocal DNSCache, and GKE's metadata server (Cloud DNS).
NODE_LOCAL_DNS = Peer(None, {}, address="169.254.20.10")
METADATA_SERVER = Peer(None, {}, address="169.254.169.254")
GATEWAY = Peer("gateway-system", {"app.kubernetes.io/name": "gateway"})
PROMETHEUS = Peer("monitoring", {"app.kubernetes.io/name": "prometheus"})
ELSEWHERE = Peer("elsewhere", {"app.kubernetes.io/name": "prometheus"})
INTERNET = Peer(None, {}, address="203.0.113.53")


def peer_name(value):
    if isinstance(value, Peer):
        return value.address or value.labels.get("app.kubernetes.io/name", value.namespace)
    return None


@pytest.mark.parametrize(("source", "destination", "port", "protocol", "allowed"), [
    (GATEWAY, WEB, 8000, "TCP", True),
    (ELSEWHERE, WEB, 8000, "TCP", True),
    (WEB, DB, 5432, "TCP", True),
    (WEB, DNS, 53, "UDP", True),
    (WEB, DNS, 53, "TCP", True),
    (WEB, NODE_LOCAL_DNS, 53, "UDP", True),
    (WEB, METADATA_SERVER, 53, "UDP", True),
    (PROMETHEUS, WEB, 9000, "TCP", True),
    (GATEWAY, WEB, 9000, "TCP", False),
    (ELSEWHERE, WEB, 9000, "TCP", False),
    (OTHER_POD, WEB, 9000, "TCP", False),
    (WEB, METADATA_SERVER, 80, "TCP", False),
    (WEB, INTERNET, 53, "UDP", False),
    (GATEWAY, DB, 5432, "TCP", False),
    (OTHER_POD, DB, 5432, "TCP", False),
    (WEB, INTERNET, 443, "TCP", False),
    (DB, INTERNET, 443, "TCP", False),
    (DB, DNS, 53, "UDP", False),
    (DB, NODE_LOCAL_DNS, 53, "UDP", False),
    (DB, WEB, 8000, "TCP", False),
    (INTERNET, DB, 5432, "TCP", False),
], ids=peer_name)
def test_network_policies_allow_each_workload_only_the_connections_it_needs(
        manifests, source, destination, port, protocol, allowed):
    # The workloads must carry the labels this table assumes, or it would test policies against nobody.
    pod_labels = [template["metadata"]["labels"] for _, template in workloads(manifests)]
    assert all(peer.labels in pod_labels for peer in (source, destination)
               if peer.namespace == NAMESPACE and peer is not OTHER_POD)
    assert connection_allowed(manifests, source, destination, port, protocol) is allowed


# ---------------------------------------------------------------------------------------------------------
# What the optional components change in the network paths


@only_with("backup")
def test_with_the_backup_its_pod_reaches_the_database_and_every_dns_resolver_web_does_and_nothing_else():
    manifests = manifests_with("backup")
    backup = Peer(NAMESPACE, {"app.kubernetes.io/name": "db-backup"})
    # The labels the policies select must be the pod's, or this would test them against nobody.
    assert pod_template(find(manifests, "CronJob", "db-backup"))["metadata"]["labels"] == backup.labels
    assert connection_allowed(manifests, backup, Peer(NAMESPACE, {"app.kubernetes.io/name": "db"}), 5432)
    for protocol in ("UDP", "TCP"):
        assert connection_allowed(manifests, backup, Peer("kube-system", {"k8s-app": "kube-dns"}), 53, protocol)
    # NodeLocal DNSCache, on the node: no pod selector matches it.
    assert connection_allowed(manifests, backup, Peer(None, {}, address="169.254.20.10"), 53, "UDP")
    internet = Peer(None, {}, address="203.0.113.53")
    assert not connection_allowed(manifests, backup, internet, 443)
    assert not connection_allowed(manifests, backup, internet, 53, "UDP")
    assert not connection_allowed(manifests, backup, Peer(NAMESPACE, {"app.kubernetes.io/name": "web"}), 8000)
    assert not connection_allowed(manifests, Peer(NAMESPACE, {"app.kubernetes.io/name": "web"}), backup, 5432)

@only_with("http-route")
def test_with_the_http_route_only_the_gateways_namespace_reaches_web_and_prometheus_still_scrapes_it():
    manifests = manifests_with("http-route")
    gateway_namespace = find(manifests, "HTTPRoute", "web")["spec"]["parentRefs"][0]["namespace"]
    web = Peer(NAMESPACE, {"app.kubernetes.io/name": "web"})
    gateway = Peer(gateway_namespace, {"app.kubernetes.io/name": "gateway"})
    assert connection_allowed(manifests, gateway, web, 8000)
    assert not connection_allowed(manifests, Peer("elsewhere", {}), web, 8000)
    assert not connection_allowed(manifests, Peer(NAMESPACE, {"app.kubernetes.io/name": "debug"}), web, 8000)
    assert not connection_allowed(manifests, gateway, web, 9000)
    assert connection_allowed(manifests, Peer("monitoring", {}), web, 9000)
