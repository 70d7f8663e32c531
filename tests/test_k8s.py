"""The Kubernetes manifests, checked offline the way a cluster would check them, and then some.

Each overlay, alone and with each optional component (k8s/components/), is rendered with kustomize and must pass:
strict schema validation for every Kubernetes version we support, a GA-only apiVersion allowlist, the Pod Security
Standards restricted profile (the namespace enforces it), and the cross-references a typo silently breaks
(selectors, ports, ConfigMap and Secret keys). Then the overlays' own promises: probes, rollouts, storage.
tests/test_k8s_components.py checks what each component adds, including the custom resources no schema here covers.
"""

import functools
import json
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
from conftest import GRACEFUL_TIMEOUT, render
from manifests import all_containers, config_data, find, labels_match, named, parse_quantity, workloads
from project import DEFAULT_VARIANT, IMAGE, KUBERNETES_VERSIONS, NAMESPACE, PROJECT, VARIANTS
from project import MIGRATE as MIGRATE_COMMAND
from yamllint import linter
from yamllint.config import YamlLintConfig

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
# Only stable APIs: a beta API can change shape or vanish in a minor release (extensions/v1beta1 did in 1.16).
GA_API_VERSIONS = {"v1", "apps/v1", "batch/v1", "policy/v1", "autoscaling/v2", "networking.k8s.io/v1"}
# Stable custom resources the components create. kubernetes-validate has no schema for them: their kinds are listed
# here so that any other would fail, and tests/test_k8s_components.py checks their fields and references instead.
CUSTOM_RESOURCES = {("gateway.networking.k8s.io/v1", "HTTPRoute"), ("monitoring.coreos.com/v1", "ServiceMonitor")}
# Only the rule kustomize cannot catch: YAML keeps the last of two equal keys, silently dropping the first.
YAMLLINT_CONFIG = YamlLintConfig("rules: {key-duplicates: enable}")


# ---------------------------------------------------------------------------------------------------------
# The gates: schema, API stability, Pod Security Standards


def schema_errors(doc: dict, version: str) -> list[str]:
    """Strict validation against one Kubernetes version's OpenAPI schema; a missing schema is an error, except for
    the custom resources listed above."""
    return list(_schema_errors(json.dumps(doc, sort_keys=True), version))


@functools.cache
def _schema_errors(doc_json: str, version: str) -> tuple[str, ...]:
    """schema_errors, once per distinct object and version: every rendering repeats most of the base's objects."""
    doc = json.loads(doc_json)
    if (doc["apiVersion"], doc["kind"]) in CUSTOM_RESOURCES:
        return ()
    try:
        validated_against = kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = ".".join(str(part) for part in error.path) or "top level"
        return (f"{named(doc)} fails the Kubernetes {version} schema at {where}: {error.message}",)
    except kubernetes_validate.SchemaNotFoundError as error:
        return (f"{named(doc)}: {error.message}",)
    # kubernetes-validate falls back to an older schema when it lacks the version asked for.
    assert validated_against == version, f"{named(doc)} was validated against {validated_against}, not {version}"
    return ()


def api_version_errors(doc: dict) -> list[str]:
    if doc["apiVersion"] in GA_API_VERSIONS or (doc["apiVersion"], doc["kind"]) in CUSTOM_RESOURCES:
        return []
    return [f"{named(doc)} uses {doc['apiVersion']}, which is not in the GA allowlist"]


def yamllint_problems(text: str, filename: str) -> list[str]:
    return [f"{filename}:{problem.line}: {problem.message}" for problem in linter.run(text, YAMLLINT_CONFIG)]


# ---------------------------------------------------------------------------------------------------------
# Schema, API versions, YAML


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_strictly_against_kubernetes(every_rendering, version):
    errors = [error for doc in every_rendering for error in schema_errors(doc, version)]
    assert errors == []


def test_only_ga_api_versions_are_used(every_rendering):
    assert [error for doc in every_rendering for error in api_version_errors(doc)] == []


def test_manifest_sources_have_no_duplicate_keys():
    sources = sorted(K8S.rglob("*.yaml"))
    assert sources, "no YAML under k8s/"
    problems = [problem for path in sources
                for problem in yamllint_problems(path.read_text(), str(path.relative_to(ROOT)))]
    assert problems == []


def test_overlays_differ_only_in_the_web_image():
    rendered = {variant: render(variant) for variant in VARIANTS}
    default = rendered[DEFAULT_VARIANT]
    assert default.count(f"image: {IMAGE}:{DEFAULT_VARIANT}") == 2  # web and its migrate init container
    for variant, text in rendered.items():
        assert text.replace(f"{IMAGE}:{variant}", f"{IMAGE}:{DEFAULT_VARIANT}") == default, variant


# ---------------------------------------------------------------------------------------------------------
# Pod security


def test_namespace_enforces_the_restricted_profile_pinned_to_the_oldest_supported_version(manifests):
    namespace = find(manifests, "Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"].items() >= {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": f"v{KUBERNETES_VERSIONS[0]}",
        "pod-security.kubernetes.io/audit": "restricted",
        "pod-security.kubernetes.io/audit-version": "latest",
        "pod-security.kubernetes.io/warn": "restricted",
        "pod-security.kubernetes.io/warn-version": "latest",
    }.items()


def test_every_object_lives_in_the_namespace_that_enforces_the_profile_and_is_labelled_part_of_notes(
        every_rendering):
    outside = [named(doc) for doc in every_rendering
               if doc["kind"] != "Namespace" and doc["metadata"].get("namespace") != NAMESPACE]
    assert outside == [], "these objects would escape the namespace that enforces the profile"
    unlabelled = [named(doc) for doc in every_rendering
                  if doc["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") != PROJECT]
    assert unlabelled == []


def test_the_overlays_run_web_and_db_only(manifests):
    assert {named(doc) for doc, _ in workloads(manifests)} == {"Deployment/web", "StatefulSet/db"}


def test_every_container_has_a_read_only_root_and_bounded_cpu_memory_and_disk(every_rendering):
    for doc, template in workloads(every_rendering):
        for container in all_containers(template["spec"]):
            where = f"{named(doc)} container {container['name']}"
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, where
            resources = container["resources"]
            for resource in ("cpu", "memory", "ephemeral-storage"):
                request, limit = resources["requests"][resource], resources["limits"][resource]
                assert parse_quantity(request) <= parse_quantity(limit), f"{where}: {resource} request > limit"


def test_every_writable_scratch_volume_is_size_limited(every_rendering):
    for doc, template in workloads(every_rendering):
        for volume in template["spec"].get("volumes", []):
            if "emptyDir" in volume:
                assert "sizeLimit" in volume["emptyDir"], f"{named(doc)} volume {volume['name']}"


def test_no_pod_gets_a_service_account_token(every_rendering):
    accounts = {doc["metadata"]["name"]: doc for doc in every_rendering if doc["kind"] == "ServiceAccount"}
    assert all(account["automountServiceAccountToken"] is False for account in accounts.values())
    for doc, template in workloads(every_rendering):
        assert template["spec"]["serviceAccountName"] in accounts, named(doc)
        assert template["spec"].get("automountServiceAccountToken") is False, named(doc)
        assert template["spec"].get("enableServiceLinks") is False, named(doc)


# ---------------------------------------------------------------------------------------------------------
# The gates reject what they should, for the right reason


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


def test_every_service_selects_pods_exposing_its_named_target_port(every_rendering):
    manifests = every_rendering
    for service in (doc for doc in manifests if doc["kind"] == "Service"):
        selected = [template for _, template in workloads(manifests)
                    if labels_match(service["spec"]["selector"], template["metadata"]["labels"])]
        assert selected, f"{named(service)} selects no pod"
        for port in service["spec"]["ports"]:
            assert isinstance(port["targetPort"], str), f"{named(service)} targets a port by number"
            for template in selected:
                names = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
                assert port["targetPort"] in names, f"{named(service)} targets {port['targetPort']}, not in {names}"


def test_every_configmap_and_secret_key_a_pod_reads_exists(every_rendering):
    manifests = every_rendering
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


def test_every_volume_mount_names_a_volume_of_its_pod(every_rendering):
    manifests = every_rendering
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
                readers.add(f"{named(doc)} {container['name']} {variable['name']}")
    assert readers == {
        "Deployment/web web DATABASE_PASSWORD_FILE",
        "Deployment/web migrate DATABASE_PASSWORD_FILE",
        "StatefulSet/db postgres POSTGRES_PASSWORD_FILE",
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


def test_web_joins_the_service_after_reaching_the_database_and_stays_in_it_through_a_database_outage(manifests):
    [container] = find(manifests, "Deployment", "web")["spec"]["template"]["spec"]["containers"]
    probes = {kind: container[f"{kind}Probe"] for kind in ("startup", "readiness", "liveness")}
    # Readiness on /readyz would empty the Service whenever the database is down: connection refused for every
    # path, instead of the service's own 503 JSON. /readyz gates the start only.
    assert {kind: probe["httpGet"]["path"] for kind, probe in probes.items()} == {
        "startup": "/readyz", "readiness": "/healthz", "liveness": "/healthz",
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


def test_web_serves_metrics_on_a_second_named_port_its_scrape_annotations_name(manifests):
    template = find(manifests, "Deployment", "web")["spec"]["template"]
    [container] = template["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 8000, "metrics": 9000}
    assert template["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true", "prometheus.io/port": str(ports["metrics"]), "prometheus.io/path": "/metrics"}
    # The public Service never exposes it.
    assert [port["targetPort"] for port in find(manifests, "Service", "web")["spec"]["ports"]] == ["http"]


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


def test_database_has_more_shared_memory_than_the_runtimes_64_mib_within_its_memory_limit(manifests):
    spec = find(manifests, "StatefulSet", "db")["spec"]["template"]["spec"]
    [container] = spec["containers"]
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["emptyDir"]["medium"] == "Memory"
    size = parse_quantity(volume["emptyDir"]["sizeLimit"])
    # Memory-backed, it is charged to the container: it must leave room for the server itself.
    assert 64 * 2**20 < size < parse_quantity(container["resources"]["limits"]["memory"])


def test_database_is_ready_only_when_it_accepts_tcp_and_alive_while_its_port_answers(manifests):
    [container] = find(manifests, "StatefulSet", "db")["spec"]["template"]["spec"]["containers"]
    for probe in ("startupProbe", "readinessProbe"):
        command = container[probe]["exec"]["command"]
        # Over the socket, pg_isready would also pass for the entrypoint's temporary init-time server.
        assert command[0] == "pg_isready" and "--host=127.0.0.1" in command, probe
    assert container["livenessProbe"]["tcpSocket"]["port"] == "postgres"


def test_each_web_pod_migrates_before_it_serves_with_its_own_image_configuration_and_password(manifests):
    spec = find(manifests, "Deployment", "web")["spec"]["template"]["spec"]
    [migrate] = spec["initContainers"]
    [web] = spec["containers"]
    assert (migrate["name"], migrate["command"], migrate["image"]) == ("migrate", MIGRATE_COMMAND, web["image"])
    assert "restartPolicy" not in migrate, "a sidecar would run beside gunicorn instead of before it"
    web_env = {variable["name"]: variable for variable in web["env"]}
    assert all(web_env[variable["name"]] == variable for variable in migrate["env"])
    assert {"DATABASE_URL", "DATABASE_PASSWORD_FILE"} <= {variable["name"] for variable in migrate["env"]}


