"""The optional kustomize components in k8s/components/, each added to an overlay as k8s/README.md shows.

Every component also passes tests/test_k8s.py's gates with every overlay (its `every_rendering` fixture) and checkov
(`make k8s-validate`). What those cannot check is here: what each component changes, and the custom resources
(HTTPRoute, ServiceMonitor) that kubernetes-validate has no schema for and checkov does not know. For those, the
fields they use and every reference they make are checked; the rest of their CRD schemas is not validated offline.
"""

import re

import pytest
import yaml
from conftest import COMPONENTS, REPOSITORY, render
from kube import Peer, connection_allowed, find, labels_match, named, pod_template, workloads
from project import DEFAULT_VARIANT, NAMESPACE

K8S = REPOSITORY / "k8s"


def manifests_with(*added: str) -> list[dict]:
    """The default overlay with these components added, rendered."""
    return [doc for doc in yaml.safe_load_all(render(DEFAULT_VARIANT, added)) if doc]


def added_by(component: str) -> list[dict]:
    """The objects a component adds to the default overlay (not those it patches)."""
    before = {(doc["kind"], doc["metadata"]["name"]) for doc in manifests_with()}
    return [doc for doc in manifests_with(component) if (doc["kind"], doc["metadata"]["name"]) not in before]


@pytest.mark.parametrize("component", COMPONENTS)
def test_every_component_is_a_kustomize_component_with_an_example_in_the_readme(component):
    kustomization = yaml.safe_load((K8S / "components" / component / "kustomization.yaml").read_text())
    assert (kustomization["apiVersion"], kustomization["kind"]) == ("kustomize.config.k8s.io/v1alpha1", "Component")
    readme = (K8S / "README.md").read_text()
    assert re.search(rf"components/{component}(?![\w-])", readme), "k8s/README.md shows no example of it"


def test_the_components_are_the_ones_these_tests_know():
    # A new component still gets every gate of tests/test_k8s.py; this names the ones with checks of their own.
    assert {"backup", "http-route", "service-monitor", "user-namespaces", "user-namespaces-db"} <= set(COMPONENTS)


# ---------------------------------------------------------------------------------------------------------
# backup: a nightly pg_dump, which may reach the database and DNS only


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


# ---------------------------------------------------------------------------------------------------------
# http-route: a Gateway API route to web, and web's HTTP port narrowed to the gateway


def only_fields(obj: dict, allowed: set[str], where: str) -> None:
    assert set(obj) <= allowed, f"{where}: {set(obj) - allowed} is not a field this test knows"


def test_the_http_route_is_a_v1_route_from_a_gateway_to_the_web_services_http_port():
    manifests = manifests_with("http-route")
    [route] = added_by("http-route")
    assert (route["apiVersion"], route["kind"]) == ("gateway.networking.k8s.io/v1", "HTTPRoute")
    only_fields(route, {"apiVersion", "kind", "metadata", "spec"}, "HTTPRoute")
    only_fields(route["spec"], {"parentRefs", "hostnames", "rules"}, "HTTPRoute.spec")
    [parent] = route["spec"]["parentRefs"]
    only_fields(parent, {"name", "namespace", "sectionName"}, "parentRefs")
    assert parent["name"] and parent["namespace"]
    [rule] = route["spec"]["rules"]
    only_fields(rule, {"matches", "backendRefs"}, "rules")
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    [backend] = rule["backendRefs"]
    service = find(manifests, "Service", backend["name"])
    assert backend["port"] in {port["port"] for port in service["spec"]["ports"]}
    assert service["metadata"]["name"] == "web"


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


def test_the_http_route_patch_fails_rather_than_narrow_another_rule_if_web_policys_rules_move():
    kustomization = (K8S / "components" / "http-route" / "kustomization.yaml").read_text()
    assert re.search(r"op: test\n\s+path: /spec/ingress/0/ports/0/port\n\s+value: 8000", kustomization)


# ---------------------------------------------------------------------------------------------------------
# service-monitor: the Prometheus Operator scrapes web's metrics port


def test_the_service_monitor_selects_a_headless_service_on_webs_metrics_port_at_the_annotated_path():
    manifests = manifests_with("service-monitor")
    added = {doc["kind"]: doc for doc in added_by("service-monitor")}
    assert set(added) == {"Service", "ServiceMonitor"}
    monitor, service = added["ServiceMonitor"], added["Service"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    only_fields(monitor["spec"], {"selector", "endpoints", "namespaceSelector"}, "ServiceMonitor.spec")
    # No namespaceSelector: the ServiceMonitor's own namespace, where the Service is.
    assert "namespaceSelector" not in monitor["spec"]
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    selected = [doc for doc in manifests if doc["kind"] == "Service"
                and labels_match(monitor["spec"]["selector"], doc["metadata"].get("labels", {}))]
    assert selected == [service], "the ServiceMonitor must select exactly the metrics Service"
    assert service["spec"]["clusterIP"] == "None"
    [endpoint] = monitor["spec"]["endpoints"]
    only_fields(endpoint, {"port", "path", "interval"}, "endpoints")
    assert re.fullmatch(r"\d+[smh]", endpoint["interval"])
    [service_port] = [port for port in service["spec"]["ports"] if port["name"] == endpoint["port"]]
    template = pod_template(find(manifests, "Deployment", "web"))
    assert labels_match(service["spec"]["selector"], template["metadata"]["labels"])
    [container] = template["spec"]["containers"]
    [container_port] = [port for port in container["ports"] if port["name"] == service_port["targetPort"]]
    annotations = template["metadata"]["annotations"]
    assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == (
        str(container_port["containerPort"]), endpoint["path"])


# ---------------------------------------------------------------------------------------------------------
# user-namespaces, user-namespaces-db: hostUsers: false, web and db separately


@pytest.mark.parametrize(("component", "in_user_namespace"), [
    ("user-namespaces", {"Deployment/web"}),
    ("user-namespaces-db", {"StatefulSet/db"}),
])
def test_each_user_namespace_component_sets_host_users_false_on_its_workload_only(component, in_user_namespace):
    manifests = manifests_with(component)
    found = {named(doc): template["spec"].get("hostUsers", True) for doc, template in workloads(manifests)}
    assert {name for name, host_users in found.items() if host_users is False} == in_user_namespace
