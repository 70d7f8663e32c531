"""The Kubernetes manifests, checked offline the way a cluster would check them, and then some.

Each overlay is rendered with kustomize and must pass: strict schema validation for every Kubernetes version
we support, a GA-only apiVersion allowlist, the Pod Security Standards restricted profile (the namespace
enforces it), and the cross-references a typo silently breaks (selectors, ports, ConfigMap and
Secret keys, network paths). The same gates are then fed broken copies to prove they fail for the right reason.

The engines that evaluate policies and turn a pod spec into `docker run` options (for a Docker smoke test that
runs the images as the cluster would) live in tests/kube.py.
"""

import copy
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
from conftest import GRACEFUL_TIMEOUT, kustomize_build
from kube import (
    Peer,
    all_containers,
    config_data,
    connection_allowed,
    find,
    labels_match,
    named,
    parse_quantity,
    pod_template,
    restricted_profile_violations,
    workloads,
)
from project import DEFAULT_VARIANT, IMAGE, VARIANTS
from project import MIGRATE as MIGRATE_COMMAND
from yamllint import linter
from yamllint.config import YamlLintConfig

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
KUBERNETES_VERSIONS = ("1.35", "1.36", "1.37")
# Only stable APIs: a beta API can change shape or vanish in a minor release (extensions/v1beta1 did in 1.16).
GA_API_VERSIONS = {"v1", "apps/v1", "batch/v1", "policy/v1", "autoscaling/v2", "networking.k8s.io/v1"}
# Only the rule kustomize cannot catch: YAML keeps the last of two equal keys, silently dropping the first.
YAMLLINT_CONFIG = YamlLintConfig("rules: {key-duplicates: enable}")


# ---------------------------------------------------------------------------------------------------------
# The gates: schema, API stability, Pod Security Standards


def schema_errors(doc: dict, version: str) -> list[str]:
    """Strict validation against one Kubernetes version's OpenAPI schema; a missing schema is an error."""
    try:
        validated_against = kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = ".".join(str(part) for part in error.path) or "top level"
        return [f"{named(doc)} fails the Kubernetes {version} schema at {where}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [f"{named(doc)}: {error.message}"]
    # kubernetes-validate falls back to an older schema when it lacks the version asked for.
    assert validated_against == version, f"{named(doc)} was validated against {validated_against}, not {version}"
    return []


def api_version_errors(doc: dict) -> list[str]:
    if doc["apiVersion"] in GA_API_VERSIONS:
        return []
    return [f"{named(doc)} uses {doc['apiVersion']}, which is not in the GA allowlist"]


def admission_problems(doc: dict) -> list[str]:
    """Everything the offline gates find wrong with one rendered object."""
    found = api_version_errors(doc)
    for version in KUBERNETES_VERSIONS:
        found += schema_errors(doc, version)
    if template := pod_template(doc):
        found += [f"{named(doc)} breaks the restricted profile: {violation}"
                  for violation in restricted_profile_violations(template)]
    return found


def yamllint_problems(text: str, filename: str) -> list[str]:
    return [f"{filename}:{problem.line}: {problem.message}" for problem in linter.run(text, YAMLLINT_CONFIG)]


# ---------------------------------------------------------------------------------------------------------
# Schema, API versions, YAML


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_strictly_against_kubernetes(manifests, version):
    errors = [error for doc in manifests for error in schema_errors(doc, version)]
    assert errors == []


def test_only_ga_api_versions_are_used(manifests):
    assert [error for doc in manifests for error in api_version_errors(doc)] == []


def test_manifest_sources_have_no_duplicate_keys():
    sources = sorted(K8S.rglob("*.yaml"))
    assert sources, "no YAML under k8s/"
    problems = [problem for path in sources
                for problem in yamllint_problems(path.read_text(), str(path.relative_to(ROOT)))]
    assert problems == []


def test_overlays_differ_only_in_the_web_image():
    rendered = {variant: kustomize_build(K8S / "overlays" / variant) for variant in VARIANTS}
    default = rendered[DEFAULT_VARIANT]
    assert default.count(f"image: {IMAGE}:{DEFAULT_VARIANT}") == 2  # the Deployment and the migration Job
    for variant, text in rendered.items():
        assert text.replace(f"{IMAGE}:{variant}", f"{IMAGE}:{DEFAULT_VARIANT}") == default, variant


# ---------------------------------------------------------------------------------------------------------
# Pod security


def test_namespace_enforces_the_restricted_profile_pinned_to_1_35(manifests):
    namespace = find(manifests, "Namespace", "notes")
    assert namespace["metadata"]["labels"].items() >= {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "v1.35",
        "pod-security.kubernetes.io/audit": "restricted",
        "pod-security.kubernetes.io/audit-version": "latest",
        "pod-security.kubernetes.io/warn": "restricted",
        "pod-security.kubernetes.io/warn-version": "latest",
    }.items()
    outside = [named(doc) for doc in manifests
               if doc["kind"] != "Namespace" and doc["metadata"].get("namespace") != "notes"]
    assert outside == [], "these objects would escape the namespace that enforces the profile"


def test_every_pod_template_meets_the_restricted_profile(manifests):
    assert {named(doc) for doc, _ in workloads(manifests)} == {"Deployment/web", "StatefulSet/db", "Job/db-migrate"}
    violations = {named(doc): restricted_profile_violations(template) for doc, template in workloads(manifests)}
    assert violations == {name: [] for name in violations}


def test_every_container_has_a_read_only_root_and_bounded_cpu_memory_and_disk(manifests):
    for doc, template in workloads(manifests):
        for container in all_containers(template["spec"]):
            where = f"{named(doc)} container {container['name']}"
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, where
            resources = container["resources"]
            for resource in ("cpu", "memory", "ephemeral-storage"):
                request, limit = resources["requests"][resource], resources["limits"][resource]
                assert parse_quantity(request) <= parse_quantity(limit), f"{where}: {resource} request > limit"


def test_every_writable_scratch_volume_is_size_limited(manifests):
    for doc, template in workloads(manifests):
        for volume in template["spec"].get("volumes", []):
            if "emptyDir" in volume:
                assert "sizeLimit" in volume["emptyDir"], f"{named(doc)} volume {volume['name']}"


def test_no_pod_gets_a_service_account_token(manifests):
    accounts = {doc["metadata"]["name"]: doc for doc in manifests if doc["kind"] == "ServiceAccount"}
    assert all(account["automountServiceAccountToken"] is False for account in accounts.values())
    for doc, template in workloads(manifests):
        assert template["spec"]["serviceAccountName"] in accounts, named(doc)
        assert template["spec"].get("automountServiceAccountToken") is False, named(doc)
        assert template["spec"].get("enableServiceLinks") is False, named(doc)


# ---------------------------------------------------------------------------------------------------------
# The gates reject what they should, for the right reason


@pytest.fixture
def web_deployment(manifests) -> dict:
    deployment = copy.deepcopy(find(manifests, "Deployment", "web"))
    assert admission_problems(deployment) == []
    return deployment


def test_admission_rejects_a_pod_that_may_run_as_root(web_deployment):
    web_deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] = False
    assert admission_problems(web_deployment) == [
        "Deployment/web breaks the restricted profile: spec.securityContext.runAsNonRoot is false",
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


def test_yamllint_reports_a_duplicated_key():
    text = (K8S / "base" / "web-service.yaml").read_text()
    # The second selector would silently win: a Service selecting every pod in the namespace.
    duplicated = text.replace("  ports:\n", "  selector: {}\n  ports:\n", 1)
    line = duplicated.splitlines().index("  selector: {}") + 1
    assert yamllint_problems(duplicated, "web-service.yaml") == [
        f'web-service.yaml:{line}: duplication of key "selector" in mapping (key-duplicates)',
    ]


# ---------------------------------------------------------------------------------------------------------
# Cross-references: the values one object expects another to have


def test_every_service_selects_pods_exposing_its_named_target_port(manifests):
    for service in (doc for doc in manifests if doc["kind"] == "Service"):
        selected = [template for _, template in workloads(manifests)
                    if labels_match(service["spec"]["selector"], template["metadata"]["labels"])]
        assert selected, f"{named(service)} selects no pod"
        for port in service["spec"]["ports"]:
            assert isinstance(port["targetPort"], str), f"{named(service)} targets a port by number"
            for template in selected:
                names = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
                assert port["targetPort"] in names, f"{named(service)} targets {port['targetPort']}, not in {names}"


def test_every_configmap_and_secret_key_a_pod_reads_exists(manifests):
    missing = []
    for doc, template in workloads(manifests):
        spec = template["spec"]
        references = []  # (kind, name, key or None for "the whole object")
        for container in all_containers(spec):
            for variable in container.get("env", []):
                for kind, field in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                    if reference := variable.get("valueFrom", {}).get(field):
                        references.append((kind, reference["name"], reference["key"]))
            for source in container.get("envFrom", []):
                for kind, field in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if reference := source.get(field):
                        references.append((kind, reference["name"], None))
        for volume in spec.get("volumes", []):
            for kind, field, name_field in (("ConfigMap", "configMap", "name"), ("Secret", "secret", "secretName")):
                if field in volume:
                    name = volume[field][name_field]
                    keys = [item["key"] for item in volume[field].get("items", [])]
                    references += [(kind, name, key) for key in keys] or [(kind, name, None)]
        assert references, f"{named(doc)} reads no configuration at all"
        for kind, name, key in references:
            present = {d["metadata"]["name"]: d for d in manifests if d["kind"] == kind}
            if name not in present:
                missing.append(f"{named(doc)} reads {kind}/{name}, which does not exist")
            elif key is not None and key not in present[name].get("data", {}):
                missing.append(f"{named(doc)} reads key {key} of {kind}/{name}, which does not exist")
    assert missing == []


def test_every_volume_mount_names_a_volume_of_its_pod(manifests):
    for doc, template in workloads(manifests):
        volumes = {v["name"] for v in template["spec"].get("volumes", [])}
        volumes |= {claim["metadata"]["name"] for claim in doc["spec"].get("volumeClaimTemplates", [])}
        for container in all_containers(template["spec"]):
            mounts = {mount["name"] for mount in container.get("volumeMounts", [])}
            assert mounts <= volumes, f"{named(doc)} mounts {mounts - volumes}, which it does not define"


def test_passwords_reach_every_container_as_files_from_the_secret(manifests):
    readers = set()
    for doc, template in workloads(manifests):
        spec = template["spec"]
        secret_volumes = {v["name"]: v["secret"] for v in spec.get("volumes", []) if "secret" in v}
        for container in all_containers(spec):
            env = container.get("env", [])
            assert not any("secretKeyRef" in v.get("valueFrom", {}) for v in env), named(doc)
            assert not any("secretRef" in source for source in container.get("envFrom", [])), named(doc)
            for variable in (v for v in env if v["name"].endswith("_PASSWORD_FILE")):
                path = PurePosixPath(variable["value"])
                mount = next(m for m in container["volumeMounts"] if PurePosixPath(m["mountPath"]) == path.parent)
                secret = secret_volumes[mount["name"]]
                assert mount["readOnly"] is True
                assert path.name in config_data(manifests, "Secret", secret["secretName"]), named(doc)
                readers.add(f"{named(doc)} {variable['name']}")
    assert readers == {
        "Deployment/web DATABASE_PASSWORD_FILE",
        "Job/db-migrate DATABASE_PASSWORD_FILE",
        "StatefulSet/db POSTGRES_PASSWORD_FILE",
    }


def test_database_url_names_the_db_service_user_and_database_without_a_password(manifests):
    url = urlsplit(config_data(manifests, "ConfigMap", "web")["DATABASE_URL"])
    postgres = config_data(manifests, "ConfigMap", "db")
    service = find(manifests, "Service", url.hostname)
    assert service["spec"]["clusterIP"] == "None"
    statefulset = find(manifests, "StatefulSet", "db")
    assert statefulset["spec"]["serviceName"] == url.hostname
    assert labels_match(service["spec"]["selector"], statefulset["spec"]["template"]["metadata"]["labels"])
    assert url.port in {port["port"] for port in service["spec"]["ports"]}
    assert url.scheme == "postgresql"
    assert url.password is None
    assert (url.username, url.path.lstrip("/")) == (postgres["POSTGRES_USER"], postgres["POSTGRES_DB"])


def test_pdbs_cover_running_pods_and_let_unhealthy_ones_be_evicted(manifests):
    for budget in (doc for doc in manifests if doc["kind"] == "PodDisruptionBudget"):
        assert any(labels_match(budget["spec"]["selector"], template["metadata"]["labels"])
                   for _, template in workloads(manifests)), f"{named(budget)} covers no pod"
        assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


# ---------------------------------------------------------------------------------------------------------
# The web Deployment


def test_web_replica_count_is_left_to_the_autoscaler(manifests):
    deployment = find(manifests, "Deployment", "web")
    autoscaler = find(manifests, "HorizontalPodAutoscaler", "web")
    assert "replicas" not in deployment["spec"]
    assert autoscaler["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}
    assert autoscaler["spec"]["minReplicas"] >= 2
    assert {"scaleUp", "scaleDown"} <= autoscaler["spec"]["behavior"].keys()
    # The HPA scales on CPU utilization, a percentage of the request, so every container needs one.
    assert all("cpu" in c["resources"]["requests"] for c in deployment["spec"]["template"]["spec"]["containers"])


def test_web_rollout_adds_a_pod_before_removing_one(manifests):
    strategy = find(manifests, "Deployment", "web")["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}


def test_web_shutdown_fits_prestop_sleep_and_gunicorn_graceful_timeout_in_the_grace_period(manifests):
    spec = find(manifests, "Deployment", "web")["spec"]["template"]["spec"]
    [container] = spec["containers"]
    # A kubelet sleep, not `exec: sleep`: the distroless image has no sleep binary and no shell.
    pre_stop_sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert spec["terminationGracePeriodSeconds"] > pre_stop_sleep + GRACEFUL_TIMEOUT


def test_web_probes_ask_healthz_for_liveness_and_readyz_for_readiness(manifests):
    [container] = find(manifests, "Deployment", "web")["spec"]["template"]["spec"]["containers"]
    probes = {kind: container[f"{kind}Probe"] for kind in ("startup", "readiness", "liveness")}
    assert {kind: probe["httpGet"]["path"] for kind, probe in probes.items()} == {
        "startup": "/healthz", "readiness": "/readyz", "liveness": "/healthz",
    }
    assert {probe["httpGet"]["port"] for probe in probes.values()} == {"http"}
    def patience(probe):
        return probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)

    assert patience(probes["startup"]) > patience(probes["liveness"]), "startup must allow a slower start"


def test_web_replicas_prefer_different_nodes_and_zones(manifests):
    template = find(manifests, "Deployment", "web")["spec"]["template"]
    [term] = template["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert labels_match(term["podAffinityTerm"]["labelSelector"], template["metadata"]["labels"])
    [spread] = template["spec"]["topologySpreadConstraints"]
    assert spread["topologyKey"] == "topology.kubernetes.io/zone"
    assert labels_match(spread["labelSelector"], template["metadata"]["labels"])


def test_web_cpu_can_be_resized_without_a_restart(manifests):
    [container] = find(manifests, "Deployment", "web")["spec"]["template"]["spec"]["containers"]
    assert {"resourceName": "cpu", "restartPolicy": "NotRequired"} in container["resizePolicy"]


def test_web_service_keeps_traffic_in_the_callers_zone(manifests):
    # The schema accepts any string here: a typo would pass every other check and fail only on apply.
    assert find(manifests, "Service", "web")["spec"]["trafficDistribution"] == "PreferSameZone"


# ---------------------------------------------------------------------------------------------------------
# The database and its migration


def test_database_keeps_its_data_in_a_retained_claim_below_the_volume_root(manifests):
    statefulset = find(manifests, "StatefulSet", "db")
    assert statefulset["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain",
                                                                          "whenScaled": "Retain"}
    [claim] = statefulset["spec"]["volumeClaimTemplates"]
    [container] = statefulset["spec"]["template"]["spec"]["containers"]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    pgdata = PurePosixPath(next(v["value"] for v in container["env"] if v["name"] == "PGDATA"))
    # initdb refuses a non-empty directory, and a fresh volume's root may hold lost+found.
    assert pgdata.parent == PurePosixPath(mount["mountPath"])
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert {"/var/run/postgresql", "/tmp"} <= writable


def test_database_is_ready_only_when_it_accepts_tcp_and_alive_while_its_port_answers(manifests):
    [container] = find(manifests, "StatefulSet", "db")["spec"]["template"]["spec"]["containers"]
    for probe in ("startupProbe", "readinessProbe"):
        command = container[probe]["exec"]["command"]
        # Over the socket, pg_isready would also pass for the entrypoint's temporary init-time server.
        assert command[0] == "pg_isready" and "--host=127.0.0.1" in command, probe
    assert container["livenessProbe"]["tcpSocket"]["port"] == "postgres"


def test_migration_job_runs_the_migrate_command_once_and_gives_up_in_bounded_time(manifests):
    job = find(manifests, "Job", "db-migrate")
    [container] = job["spec"]["template"]["spec"]["containers"]
    [web] = find(manifests, "Deployment", "web")["spec"]["template"]["spec"]["containers"]
    assert container["image"] == web["image"]
    assert container["command"] == MIGRATE_COMMAND
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert job["spec"]["podReplacementPolicy"] == "Failed"
    assert job["spec"]["backoffLimit"] > 0
    assert 0 < job["spec"]["activeDeadlineSeconds"] <= 600
    assert job["spec"]["ttlSecondsAfterFinished"] > 0


# ---------------------------------------------------------------------------------------------------------
# Network policies, evaluated: which connections the rendered policies let through

NAMESPACE = "notes"


WEB = Peer(NAMESPACE, {"app.kubernetes.io/name": "web"})
DB = Peer(NAMESPACE, {"app.kubernetes.io/name": "db"})
MIGRATE = Peer(NAMESPACE, {"app.kubernetes.io/name": "db-migrate"})
DNS = Peer("kube-system", {"k8s-app": "kube-dns"})
INGRESS_CONTROLLER = Peer("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})
INTERNET = Peer("elsewhere", {})


@pytest.mark.parametrize(("source", "destination", "port", "protocol", "allowed"), [
    (INGRESS_CONTROLLER, WEB, 8000, "TCP", True),
    (WEB, DB, 5432, "TCP", True),
    (MIGRATE, DB, 5432, "TCP", True),
    (WEB, DNS, 53, "UDP", True),
    (MIGRATE, DNS, 53, "TCP", True),
    (INGRESS_CONTROLLER, WEB, 9000, "TCP", False),
    (INGRESS_CONTROLLER, DB, 5432, "TCP", False),
    (WEB, INTERNET, 443, "TCP", False),
    (DB, INTERNET, 443, "TCP", False),
    (DB, DNS, 53, "UDP", False),
    (DB, WEB, 8000, "TCP", False),
    (INGRESS_CONTROLLER, MIGRATE, 8000, "TCP", False),
], ids=lambda value: value.labels.get("app.kubernetes.io/name", value.namespace) if isinstance(value, Peer) else None)
def test_network_policies_allow_each_workload_only_the_connections_it_needs(
        manifests, source, destination, port, protocol, allowed):
    # The workloads must carry the labels this table assumes, or it would test policies against nobody.
    pod_labels = [template["metadata"]["labels"] for _, template in workloads(manifests)]
    assert all(peer.labels in pod_labels for peer in (source, destination) if peer.namespace == NAMESPACE)
    assert connection_allowed(manifests, source, destination, port, protocol) is allowed
