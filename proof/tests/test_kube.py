"""proof/kube.py's engines, and tests/manifests.py's lookups, on small hand-made inputs, each rule seen passing and
failing: the manifests' tests can only be as right as these are."""

import base64
import copy

import pytest
from manifests import find, labels_match, parse_quantity

from proof.kube import (
    Peer,
    connection_allowed,
    docker_run,
    evictions_allowed,
    host_path,
    option_values,
    restricted_profile_violations,
)


@pytest.mark.parametrize(("quantity", "value"), [
    ("250m", 0.25), ("1", 1), (2, 2), ("64Mi", 64 * 2**20), ("1Gi", 2**30), ("2k", 2000), ("1.5G", 1.5e9)])
def test_parse_quantity_reads_decimal_and_binary_suffixes(quantity, value):
    assert parse_quantity(quantity) == pytest.approx(value)


@pytest.mark.parametrize(("selector", "matches"), [
    ({"app": "web"}, True),
    ({"matchLabels": {"app": "db"}}, False),
    ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "edge"]}]}, True),
    ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["front"]}]}, False),
    ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, True),
    ({"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]}, True),
    ({"matchLabels": {}}, True),  # an empty selector selects everything
])
def test_labels_match_follows_selector_semantics(selector, matches):
    assert labels_match(selector, {"app": "web", "tier": "front"}) is matches


RESTRICTED_POD = {"metadata": {}, "spec": {
    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
    "volumes": [{"name": "tmp", "emptyDir": {}}],
    "containers": [{"name": "app", "image": "app", "securityContext": {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}],
}}


def test_a_pod_that_meets_the_restricted_profile_has_no_violation():
    assert restricted_profile_violations(RESTRICTED_POD) == []


@pytest.mark.parametrize(("path", "value", "reported"), [
    (("spec", "hostNetwork"), True, "spec.hostNetwork is true"),
    (("spec", "volumes"), [{"name": "host", "hostPath": {"path": "/"}}], "volume host is of type hostPath"),
    (("spec", "securityContext", "runAsNonRoot"), False, "runAsNonRoot"),
    (("spec", "securityContext", "seccompProfile"), {"type": "Unconfined"}, "seccompProfile.type is Unconfined"),
    (("spec", "containers", 0, "securityContext", "privileged"), True, "privileged is true"),
    (("spec", "containers", 0, "securityContext", "allowPrivilegeEscalation"), True, "allowPrivilegeEscalation"),
    (("spec", "containers", 0, "securityContext", "capabilities", "add"), ["NET_ADMIN"], "adds capability NET_ADMIN"),
    (("spec", "containers", 0, "securityContext", "capabilities", "drop"), [], "drop does not include ALL"),
    (("spec", "containers", 0, "ports"), [{"containerPort": 80, "hostPort": 80}], "sets hostPort 80"),
    (("spec", "containers", 0, "securityContext", "runAsUser"), 0, "runAsUser is 0"),
])
def test_each_restricted_rule_reports_the_field_that_breaks_it(path, value, reported):
    pod = copy.deepcopy(RESTRICTED_POD)
    *parents, last = path
    target = pod
    for key in parents:
        target = target[key]
    target[last] = value
    violations = restricted_profile_violations(pod)
    assert any(reported in violation for violation in violations), violations


WEB, DB, OTHER = (Peer("shop", {"app": name}) for name in ("web", "db", "batch"))
ELSEWHERE = Peer("monitoring", {"app": "web"})


def policy(name, selector, types, ingress=None, egress=None):
    spec = {"podSelector": {"matchLabels": selector}, "policyTypes": types}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    return {"kind": "NetworkPolicy", "metadata": {"name": name, "namespace": "shop"}, "spec": spec}


def test_without_a_policy_every_connection_is_allowed():
    assert connection_allowed([], OTHER, DB, 5432)


def test_an_ingress_rule_admits_only_its_peers_on_its_ports():
    db_from_web = policy("db", {"app": "db"}, ["Ingress"],
                         ingress=[{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                                   "ports": [{"port": 5432}]}])
    assert connection_allowed([db_from_web], WEB, DB, 5432)
    assert not connection_allowed([db_from_web], WEB, DB, 5433)
    assert not connection_allowed([db_from_web], OTHER, DB, 5432)
    # A pod selector alone means the policy's own namespace: the same labels elsewhere do not count.
    assert not connection_allowed([db_from_web], ELSEWHERE, DB, 5432)


def test_a_policy_with_no_rules_denies_its_direction_and_a_namespace_selector_admits_another_namespace():
    deny_egress = policy("web-egress", {"app": "web"}, ["Egress"], egress=[])
    assert not connection_allowed([deny_egress], WEB, DB, 5432)
    from_monitoring = policy("web-in", {"app": "web"}, ["Ingress"], ingress=[{"from": [{"namespaceSelector": {
        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]}])
    assert connection_allowed([from_monitoring], ELSEWHERE, WEB, 8000)
    assert not connection_allowed([from_monitoring], OTHER, WEB, 8000)


def test_an_ip_block_admits_addresses_in_its_range_but_not_its_exceptions_and_selectors_admit_only_pods():
    dns = {"ports": [{"protocol": "UDP", "port": 53}]}
    web_dns = policy("web-dns", {"app": "web"}, ["Egress"], egress=[
        {"to": [{"ipBlock": {"cidr": "169.254.0.0/16", "except": ["169.254.169.0/24"]}}], **dns},
        {"to": [{"namespaceSelector": {}}], **dns},
    ])
    node_local = Peer(None, {}, address="169.254.20.10")
    assert connection_allowed([web_dns], WEB, node_local, 53, "UDP")
    assert not connection_allowed([web_dns], WEB, node_local, 53, "TCP")
    assert not connection_allowed([web_dns], WEB, Peer(None, {}, address="169.254.169.254"), 53, "UDP")
    # An empty namespace selector means every pod in every namespace, and no address outside them.
    assert not connection_allowed([web_dns], WEB, Peer(None, {}, address="203.0.113.53"), 53, "UDP")
    assert connection_allowed([web_dns], WEB, ELSEWHERE, 53, "UDP")
    # An address outside every pod network is never a policy's subject: only the pod's own ingress rules decide.
    assert connection_allowed([web_dns], Peer(None, {}, address="203.0.113.53"), WEB, 8000)


def test_evictions_allowed_reads_both_kinds_of_budget():
    assert evictions_allowed({"spec": {"minAvailable": 1}}, 1) == 0  # the one-replica budget that blocks drains
    assert evictions_allowed({"spec": {"minAvailable": 1}}, 2) == 1
    assert evictions_allowed({"spec": {"maxUnavailable": 1}}, 1) == 1


def test_find_knows_a_generated_configmap_by_the_name_before_its_hash():
    manifests = [{"kind": "ConfigMap", "metadata": {"name": "web-5t8h9kbc7m"}, "data": {}}]
    assert find(manifests, "ConfigMap", "web") is manifests[0]
    with pytest.raises(LookupError):
        find(manifests, "ConfigMap", "we")


def test_docker_run_maps_the_pod_specs_hardening_resources_environment_and_volumes(tmp_path):
    manifests = [
        {"kind": "ConfigMap", "metadata": {"name": "app-5t8h9kbc7m"}, "data": {"MODE": "fast"}},
        {"kind": "Secret", "metadata": {"name": "pw-8h9kbc7m5t"},
         "data": {"password": base64.b64encode(b"s3cret").decode()}},
    ]
    deployment = {"kind": "Deployment", "metadata": {"name": "app"}, "spec": {"template": {"spec": {
        "terminationGracePeriodSeconds": 45,
        "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000},
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}},
                    {"name": "pw", "secret": {"secretName": "pw", "items": [{"key": "password", "path": "pw"}]}}],
        "containers": [{
            "name": "app", "image": "app:1", "command": ["python", "-m", "app"], "args": ["serve"],
            "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]}},
            "resources": {"limits": {"memory": "128Mi", "cpu": "500m"}},
            "env": [{"name": "LITERAL", "value": "1"},
                    {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "app", "key": "MODE"}}}],
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "pw", "mountPath": "/run/secrets"}],
        }]}}}}
    run = docker_run(manifests, deployment, tmp_path)
    assert (run.image, run.args) == ("app:1", ["-m", "app", "serve"])
    assert option_values(run.options, "--entrypoint") == ["python"]
    assert option_values(run.options, "--user") == ["1000:1000"]
    assert option_values(run.options, "--group-add") == ["2000"]
    assert "--read-only" in run.options and option_values(run.options, "--cap-drop") == ["ALL"]
    assert option_values(run.options, "--security-opt") == ["no-new-privileges"]
    assert option_values(run.options, "--memory") == [str(128 * 2**20)]
    assert option_values(run.options, "--cpus") == ["0.5"]
    assert option_values(run.options, "--stop-timeout") == ["45"]
    assert option_values(run.options, "--env") == ["LITERAL=1", "MODE=fast"]
    assert option_values(run.options, "--tmpfs") == [f"/tmp:mode=1777,size={16 * 2**20}"]
    assert host_path(run, "/run/secrets/pw").read_text() == "s3cret"


def test_docker_run_refuses_what_it_cannot_map(tmp_path):
    deployment = {"kind": "Deployment", "metadata": {"name": "app"}, "spec": {"template": {"spec": {
        "securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "x.json"}},
        "containers": [{"name": "app", "image": "app:1"}]}}}}
    with pytest.raises(ValueError, match="seccomp"):
        docker_run([], deployment, tmp_path)


def test_docker_run_runs_the_named_container_which_may_be_an_init_container(tmp_path):
    deployment = {"kind": "Deployment", "metadata": {"name": "app"}, "spec": {"template": {"spec": {
        "initContainers": [{"name": "setup", "image": "app:1", "command": ["app", "setup"]}],
        "containers": [{"name": "app", "image": "app:1", "args": ["serve"]}]}}}}
    assert docker_run([], deployment, tmp_path).args == ["serve"]
    setup = docker_run([], deployment, tmp_path, container_name="setup")
    assert (option_values(setup.options, "--entrypoint"), setup.args) == (["app"], ["setup"])
    with pytest.raises(ValueError, match="Deployment/app has no container missing"):
        docker_run([], deployment, tmp_path, container_name="missing")
