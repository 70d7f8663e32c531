"""The Kubernetes manifests, checked offline the way a cluster would check them, and then some.

Each overlay is rendered with kustomize and must pass: strict schema validation for every Kubernetes version
we support, a GA-only apiVersion allowlist, the Pod Security Standards restricted profile (the namespace
enforces it), checkov, and the cross-references a typo silently breaks (selectors, ports, ConfigMap and
Secret keys, network paths). The same gates are then fed broken copies to prove they fail for the right reason.

`docker_run` at the bottom turns a rendered pod spec into `docker run` options, so a Docker smoke test can run
the images exactly as the cluster would.
"""

import base64
import copy
import json
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import requests
import yaml
from conftest import GRACEFUL_TIMEOUT, wait_until
from project import IMAGE, POSTGRES_IMAGE, make_default
from project import MIGRATE as MIGRATE_COMMAND
from yamllint import linter
from yamllint.config import YamlLintConfig

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
OVERLAYS = ("slim", "distroless")
KUBERNETES_VERSIONS = ("1.35", "1.36", "1.37")
# Only stable APIs: a beta API can change shape or vanish in a minor release (extensions/v1beta1 did in 1.16).
GA_API_VERSIONS = {"v1", "apps/v1", "batch/v1", "policy/v1", "autoscaling/v2", "networking.k8s.io/v1"}
CHECKOV_CONFIG = Path(__file__).with_name("checkov-k8s.yaml")
# Only the rule kustomize cannot catch: YAML keeps the last of two equal keys, silently dropping the first.
YAMLLINT_CONFIG = YamlLintConfig("rules: {key-duplicates: enable}")


# ---------------------------------------------------------------------------------------------------------
# Rendering and reading the manifests


def kustomize_build(directory: Path) -> str:
    if shutil.which("kubectl"):
        command = ["kubectl", "kustomize", str(directory)]
    elif shutil.which("kustomize"):
        command = ["kustomize", "build", str(directory)]
    else:
        pytest.skip("neither kubectl nor kustomize is on PATH: the manifests cannot be rendered")
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def rendered(overlay) -> str:
    return kustomize_build(K8S / "overlays" / overlay)


@pytest.fixture(scope="module")
def manifests(rendered) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def named(doc: dict) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def find(manifests: list[dict], kind: str, name: str) -> dict:
    """The rendered object; generated ConfigMaps and Secrets are found by the name before kustomize's hash."""
    for doc in manifests:
        actual = doc["metadata"]["name"]
        hashed = actual.startswith(f"{name}-") and len(actual) == len(name) + 11  # "-" and a 10-character hash
        if doc["kind"] == kind and (actual == name or hashed):
            return doc
    raise LookupError(f"no {kind}/{name} in the rendered manifests")


def pod_template(doc: dict) -> dict | None:
    """The pod template ({metadata, spec}) of a workload, or None for objects that run no pods."""
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]
    if doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
        return doc["spec"]["template"]
    return None


def workloads(manifests: list[dict]) -> list[tuple[dict, dict]]:
    return [(doc, template) for doc in manifests if (template := pod_template(doc))]


def all_containers(spec: dict) -> list[dict]:
    return [*spec.get("initContainers", []), *spec["containers"], *spec.get("ephemeralContainers", [])]


def labels_match(selector: dict, labels: dict) -> bool:
    """Kubernetes label-selector semantics: matchLabels and matchExpressions, or a plain map (Service)."""
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        matches = {
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not matches:
            return False
    return True


def parse_quantity(quantity: str | int) -> float:
    """A Kubernetes resource quantity ("250m", "256Mi", "1") as a plain number of cores or bytes."""
    text = str(quantity)
    for suffix, factor in (("Ki", 2**10), ("Mi", 2**20), ("Gi", 2**30), ("Ti", 2**40),
                           ("k", 10**3), ("M", 10**6), ("G", 10**9), ("T", 10**12), ("m", 10**-3)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def config_data(manifests: list[dict], kind: str, name: str) -> dict[str, str]:
    """A ConfigMap's or Secret's keys and their decoded values."""
    doc = find(manifests, kind, name)
    if kind == "Secret":
        return {key: base64.b64decode(value).decode() for key, value in doc.get("data", {}).items()}
    return doc.get("data", {})


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


# The Pod Security Standards as Kubernetes 1.35 defines them:
# https://kubernetes.io/docs/concepts/security/pod-security-standards/
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
CONFINED_PROFILE_TYPES = {"RuntimeDefault", "Localhost"}


def security_context_violations(where: str, context: dict) -> list[str]:
    """The checks that apply alike to the pod's and to each container's securityContext."""
    found = []
    if context.get("windowsOptions", {}).get("hostProcess"):
        found.append(f"{where}.windowsOptions.hostProcess is true")
    selinux = context.get("seLinuxOptions", {})
    if selinux.get("type", "") not in SELINUX_TYPES or "user" in selinux or "role" in selinux:
        found.append(f"{where}.seLinuxOptions sets a custom user, role or type")
    for profile in ("seccompProfile", "appArmorProfile"):
        if profile in context and context[profile]["type"] not in CONFINED_PROFILE_TYPES:
            found.append(f"{where}.{profile}.type is {context[profile]['type']}")
    if context.get("runAsNonRoot") is False:
        found.append(f"{where}.runAsNonRoot is false")
    if context.get("runAsUser") == 0:
        found.append(f"{where}.runAsUser is 0 (root)")
    return found


def restricted_profile_violations(template: dict) -> list[str]:
    """Every way a pod template breaks the restricted profile (which includes baseline), field by field."""
    spec = template["spec"]
    pod_context = spec.get("securityContext", {})
    found = [f"spec.{field} is true" for field in ("hostNetwork", "hostPID", "hostIPC") if spec.get(field)]
    found += security_context_violations("spec.securityContext", pod_context)
    for volume in spec.get("volumes", []):
        volume_type = next(key for key in volume if key != "name")
        if volume_type not in RESTRICTED_VOLUME_TYPES:
            found.append(f"volume {volume['name']} is of type {volume_type}")
    found += [f"sysctl {sysctl['name']} is not a safe sysctl"
              for sysctl in pod_context.get("sysctls", []) if sysctl["name"] not in SAFE_SYSCTLS]
    for key, value in template.get("metadata", {}).get("annotations", {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and value == "unconfined":
            found.append(f"annotation {key} is unconfined")
    for container in all_containers(spec):
        where = f"container {container['name']}"
        context = container.get("securityContext", {})
        found += security_context_violations(f"{where} securityContext", context)
        if context.get("privileged"):
            found.append(f"{where} securityContext.privileged is true")
        if context.get("procMount", "Default") != "Default":
            found.append(f"{where} securityContext.procMount is {context['procMount']}")
        found += [f"{where} sets hostPort {port['hostPort']}" for port in container.get("ports", [])
                  if port.get("hostPort")]
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{where} securityContext.allowPrivilegeEscalation is not false")
        capabilities = context.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            found.append(f"{where} securityContext.capabilities.drop does not include ALL")
        found += [f"{where} adds capability {capability}"
                  for capability in capabilities.get("add", []) if capability != "NET_BIND_SERVICE"]
        # A container inherits these from the pod; the pod or every container must set them.
        if {**pod_context, **context}.get("runAsNonRoot") is not True:
            found.append(f"{where} does not run with runAsNonRoot: true")
        if "seccompProfile" not in {**pod_context, **context}:
            found.append(f"{where} has no seccompProfile")
    return found


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


def run_checkov(manifest: Path) -> dict:
    # checkov pins packaging<24 and pytest 9 needs >=24, so checkov may live in a venv of its own inside this one.
    here = [Path(sys.executable).parent, Path(sys.prefix) / "checkov" / "bin"]
    checkov = shutil.which("checkov", path=os.pathsep.join([*map(str, here), os.environ.get("PATH", "")]))
    assert checkov, f"checkov is not installed: looked in {', '.join(map(str, here))} and on PATH"
    result = subprocess.run(
        [checkov, "--config-file", str(CHECKOV_CONFIG), "--file", str(manifest), "--output", "json"],
        capture_output=True, text=True, timeout=300,
    )
    # checkov exits 1 when a check fails; anything else is a crash, and its JSON would be missing.
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


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
    slim, distroless = (kustomize_build(K8S / "overlays" / name) for name in OVERLAYS)
    assert slim.count(f"image: {IMAGE}:slim") == 2  # the Deployment and the migration Job
    assert distroless.replace(f"{IMAGE}:distroless", f"{IMAGE}:slim") == slim


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


def test_checkov_finds_no_failed_check(rendered, tmp_path):
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(rendered)
    report = run_checkov(manifest)
    failed = [f"{check['check_id']} {check['resource']}: {check['check_name']}"
              for check in report["results"]["failed_checks"]]
    assert failed == []
    # A checkov that parsed nothing would also report no failure.
    checked = {check["resource"] for check in report["results"]["passed_checks"]}
    assert {"Deployment.notes.web", "StatefulSet.notes.db", "Job.notes.db-migrate"} <= checked


def test_every_checkov_skip_states_its_reason():
    lines = CHECKOV_CONFIG.read_text().splitlines()
    for check in yaml.safe_load(CHECKOV_CONFIG.read_text())["skip-check"]:
        above = lines[: lines.index(f"  - {check}")]
        reason = []
        while above and above[-1].lstrip().startswith("#"):
            reason.insert(0, above.pop().strip("# "))
        assert reason and reason[0].startswith(f"{check} (") and len(" ".join(reason)) > 60, (
            f"{check} is skipped without a reason in the comment above it"
        )


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


@dataclass(frozen=True)
class Peer:
    namespace: str
    labels: dict

    @property
    def namespace_labels(self) -> dict:
        return {"kubernetes.io/metadata.name": self.namespace}


def peer_matches(rule_peers: list[dict] | None, peer: Peer) -> bool:
    if rule_peers is None:
        return True
    for rule_peer in rule_peers:
        if "ipBlock" in rule_peer:
            continue  # addresses are not modelled; these policies select pods and namespaces only
        if "namespaceSelector" in rule_peer:
            namespace_ok = labels_match(rule_peer["namespaceSelector"], peer.namespace_labels)
        else:
            namespace_ok = peer.namespace == NAMESPACE
        pod_ok = labels_match(rule_peer.get("podSelector", {}), peer.labels)
        if namespace_ok and pod_ok:
            return True
    return False


def port_matches(rule_ports: list[dict] | None, port: int, protocol: str) -> bool:
    return rule_ports is None or any(
        p.get("protocol", "TCP") == protocol and p.get("port") in (None, port) for p in rule_ports
    )


def direction_allows(manifests, direction: str, subject: Peer, other: Peer, port: int, protocol: str) -> bool:
    """Whether the policies selecting `subject` allow this connection in `direction` (Ingress or Egress)."""
    if subject.namespace != NAMESPACE:
        return True  # another namespace's policies are not ours to test
    policies = [doc["spec"] for doc in manifests if doc["kind"] == "NetworkPolicy"
                and labels_match(doc["spec"]["podSelector"], subject.labels)
                and direction in doc["spec"]["policyTypes"]]
    if not policies:
        return True
    peers_field = "from" if direction == "Ingress" else "to"
    return any(peer_matches(rule.get(peers_field), other) and port_matches(rule.get("ports"), port, protocol)
               for policy in policies for rule in policy.get(direction.lower(), []))


def connection_allowed(manifests, source: Peer, destination: Peer, port: int, protocol: str = "TCP") -> bool:
    return (direction_allows(manifests, "Egress", source, destination, port, protocol)
            and direction_allows(manifests, "Ingress", destination, source, port, protocol))


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


# ---------------------------------------------------------------------------------------------------------
# Running a rendered pod spec's container under Docker, for the smoke test


@dataclass
class DockerRun:
    """A `docker run` reproducing one container of a rendered workload."""

    options: list[str]
    image: str
    args: list[str]

    def argv(self, *extra: str) -> list[str]:
        return ["docker", "run", *extra, *self.options, self.image, *self.args]


def docker_run(manifests: list[dict], workload: dict, files_dir: Path) -> DockerRun:
    """Derives `docker run` options from the workload's rendered pod spec.

    ConfigMap and Secret volumes are written under `files_dir` and bind-mounted read-only; emptyDirs become
    tmpfs mounts; claims become named volumes. Not reproducible in Docker, and so left out: probes, preStop,
    ephemeral-storage limits, fsGroup's ownership change (files are written world-readable instead).
    """
    spec = pod_template(workload)["spec"]
    [container] = spec["containers"]
    pod_context = spec.get("securityContext", {})
    context = {**pod_context, **container.get("securityContext", {})}
    if context.get("seccompProfile", {}).get("type", "RuntimeDefault") != "RuntimeDefault":
        raise ValueError("only the runtime's default seccomp profile maps onto Docker's")

    options = []
    if "runAsUser" in context:
        options += ["--user", ":".join(str(context[k]) for k in ("runAsUser", "runAsGroup") if k in context)]
    for group in [pod_context.get("fsGroup"), *pod_context.get("supplementalGroups", [])]:
        if group is not None:
            options += ["--group-add", str(group)]
    if context.get("readOnlyRootFilesystem"):
        options.append("--read-only")
    if context.get("allowPrivilegeEscalation") is False:
        options += ["--security-opt", "no-new-privileges"]
    for capability in context.get("capabilities", {}).get("drop", []):
        options += ["--cap-drop", capability]
    for capability in context.get("capabilities", {}).get("add", []):
        options += ["--cap-add", capability]
    options += ["--stop-timeout", str(spec.get("terminationGracePeriodSeconds", 30))]
    limits = container.get("resources", {}).get("limits", {})
    if "memory" in limits:
        options += ["--memory", str(int(parse_quantity(limits["memory"])))]
    if "cpu" in limits:
        options += ["--cpus", f"{parse_quantity(limits['cpu']):g}"]
    if "workingDir" in container:
        options += ["--workdir", container["workingDir"]]

    for variable in container.get("env", []):
        options += ["--env", f"{variable['name']}={env_value(manifests, variable)}"]

    volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
    claims = {claim["metadata"]["name"] for claim in workload["spec"].get("volumeClaimTemplates", [])}
    for mount in container.get("volumeMounts", []):
        if "subPath" in mount:
            raise ValueError(f"subPath mounts are not mapped: {mount['name']}")
        target = mount["mountPath"]
        if mount["name"] in claims:
            options += ["--mount", f"type=volume,src={mount['name']},dst={target}"]
            continue
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            size = volume["emptyDir"].get("sizeLimit")
            # emptyDir is world-writable, like a tmpfs with mode 1777.
            options += ["--tmpfs", f"{target}:mode=1777" + (f",size={int(parse_quantity(size))}" if size else "")]
        elif "secret" in volume or "configMap" in volume:
            source = files_dir / mount["name"]
            write_volume_files(manifests, volume, source)
            options += ["--mount", f"type=bind,src={source},dst={target},readonly"]
        else:
            raise ValueError(f"volume {mount['name']} has a type this helper does not map")

    command = container.get("command", [])
    if command:
        options += ["--entrypoint", command[0]]
    return DockerRun(options, container["image"], [*command[1:], *container.get("args", [])])


def env_value(manifests: list[dict], variable: dict) -> str:
    if "value" in variable:
        return variable["value"]
    source = variable["valueFrom"]
    for kind, field in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
        if field in source:
            return config_data(manifests, kind, source[field]["name"])[source[field]["key"]]
    raise ValueError(f"{variable['name']}: only literal, ConfigMap and Secret values are mapped")


def write_volume_files(manifests: list[dict], volume: dict, directory: Path) -> None:
    kind, source = ("Secret", volume["secret"]) if "secret" in volume else ("ConfigMap", volume["configMap"])
    data = config_data(manifests, kind, source.get("secretName") or source.get("name"))
    paths = {item["key"]: item["path"] for item in source.get("items", [])} or {key: key for key in data}
    directory.mkdir(parents=True, exist_ok=True)
    for key, path in paths.items():
        file = directory / path
        file.write_text(data[key])
        # Docker cannot give a bind mount the pod's fsGroup, so the container's user reads it as "other".
        file.chmod(0o444)


def option_values(options: list[str], flag: str) -> list[str]:
    return [options[i + 1] for i, option in enumerate(options) if option == flag]


def host_path(run: DockerRun, container_path: str) -> Path:
    """Where a file the container sees at `container_path` lives on the host, through a bind mount."""
    for mount in option_values(run.options, "--mount"):
        fields = dict(field.split("=", 1) for field in mount.split(",") if "=" in field)
        if fields["type"] == "bind" and PurePosixPath(container_path).is_relative_to(fields["dst"]):
            return Path(fields["src"]) / PurePosixPath(container_path).relative_to(fields["dst"])
    raise LookupError(f"{container_path} is not on a bind mount")


def test_docker_run_reproduces_the_web_pods_hardening_and_configuration(manifests, overlay, tmp_path):
    run = docker_run(manifests, find(manifests, "Deployment", "web"), tmp_path)
    assert run.image == f"{IMAGE}:{overlay}"
    assert run.args == []
    assert option_values(run.options, "--user") == ["65532:65532"]
    assert option_values(run.options, "--group-add") == ["65532"]
    assert "--read-only" in run.options
    assert option_values(run.options, "--cap-drop") == ["ALL"]
    assert option_values(run.options, "--cap-add") == []
    assert option_values(run.options, "--security-opt") == ["no-new-privileges"]
    assert option_values(run.options, "--tmpfs") == [f"/tmp:mode=1777,size={16 * 2**20}"]
    assert option_values(run.options, "--memory") == [str(256 * 2**20)]
    assert option_values(run.options, "--cpus") == ["1"]
    assert option_values(run.options, "--stop-timeout") == ["30"]
    assert option_values(run.options, "--env") == [
        "NAME=Kubernetes",
        "LOG_LEVEL=INFO",
        "DATABASE_URL=postgresql://notes@db:5432/notes",
        "DATABASE_PASSWORD_FILE=/run/secrets/db_password",
    ]
    argv = run.argv("--detach", "--publish", "8000:8000")
    assert argv[:5] == ["docker", "run", "--detach", "--publish", "8000:8000"]
    assert argv[-1] == f"{IMAGE}:{overlay}"


def test_docker_run_for_the_migration_replaces_the_entrypoint_with_the_migrate_command(manifests, tmp_path):
    run = docker_run(manifests, find(manifests, "Job", "db-migrate"), tmp_path)
    assert option_values(run.options, "--entrypoint") == [MIGRATE_COMMAND[0]]
    assert run.args == MIGRATE_COMMAND[1:]


def test_docker_run_for_the_database_keeps_pgdata_in_a_named_volume_and_scratch_in_tmpfs(manifests, tmp_path):
    run = docker_run(manifests, find(manifests, "StatefulSet", "db"), tmp_path)
    assert run.image == make_default("POSTGRES_IMAGE")
    assert option_values(run.options, "--user") == ["10999:10999"]
    mounts = option_values(run.options, "--mount")
    assert "type=volume,src=db-data,dst=/var/lib/postgresql/data" in mounts
    assert [tmpfs.split(":")[0] for tmpfs in option_values(run.options, "--tmpfs")] == ["/var/run/postgresql", "/tmp"]
    assert "PGDATA=/var/lib/postgresql/data/pgdata" in option_values(run.options, "--env")
    assert "POSTGRES_USER=notes" in option_values(run.options, "--env")


def test_docker_run_puts_the_secret_where_every_password_file_variable_points(manifests, tmp_path):
    password = config_data(manifests, "Secret", "db-password")["db_password"]
    for doc, _ in workloads(manifests):
        run = docker_run(manifests, doc, tmp_path / doc["metadata"]["name"])
        files = [env.split("=", 1)[1] for env in option_values(run.options, "--env")
                 if env.split("=", 1)[0].endswith("_PASSWORD_FILE")]
        assert len(files) == 1, named(doc)
        password_file = host_path(run, files[0])
        assert password_file.read_text() == password
        assert password_file.stat().st_mode & 0o004, "the container's user could not read it"


# ---------------------------------------------------------------------------------------------------------
# Smoke test: the rendered pods, run under Docker with the options derived above


def upstream_to_configured(image: str) -> str:
    """The manifests name the upstream Postgres image; a machine without a registry runs POSTGRES_IMAGE instead."""
    return POSTGRES_IMAGE if image == make_default("POSTGRES_IMAGE") else image


@pytest.mark.docker
def test_rendered_pods_run_migrate_and_answer_their_probes_under_docker(manifests, overlay, images, tmp_path):
    suffix = uuid.uuid4().hex[:8]
    network, volume = f"k8s-smoke-{suffix}", f"k8s-smoke-db-data-{suffix}"
    started: list[str] = []

    def run(workload: dict, *extra: str, detach: bool = True) -> subprocess.CompletedProcess:
        derived = docker_run(manifests, workload, tmp_path / workload["metadata"]["name"])
        options = [option.replace("src=db-data,", f"src={volume},") for option in derived.options]
        name = f"{network}-{workload['metadata']['name']}"
        argv = ["docker", "run", "--name", name, "--network", network, *extra, *options,
                upstream_to_configured(derived.image), *derived.args]
        if detach:
            argv.insert(2, "--detach")
        started.append(name)
        return subprocess.run(argv, capture_output=True, text=True, timeout=120)

    subprocess.run(["docker", "network", "create", network], check=True, capture_output=True)
    try:
        db = run(find(manifests, "StatefulSet", "db"), "--network-alias", "db")
        assert db.returncode == 0, db.stderr
        # The Job's command waits for the database to accept connections (migrate --wait), like the real Job.
        migrate = run(find(manifests, "Job", "db-migrate"), detach=False)
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        web_deployment = find(manifests, "Deployment", "web")
        web = run(web_deployment, "--publish", "127.0.0.1::8000")
        assert web.returncode == 0, web.stderr
        port = subprocess.run(["docker", "port", started[-1], "8000/tcp"], capture_output=True, text=True,
                              check=True).stdout.split(":")[-1].strip()
        [container] = pod_template(web_deployment)["spec"]["containers"]
        probes = {kind: container[kind]["httpGet"]["path"] for kind in ("readinessProbe", "livenessProbe")}
        answers: dict = {}

        def probes_answer_200():
            try:
                answers.update({kind: requests.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code
                                for kind, path in probes.items()})
            except requests.ConnectionError:
                return False
            return answers == {"readinessProbe": 200, "livenessProbe": 200}

        wait_until(probes_answer_200, timeout=30, interval=0.2, explain=lambda: str(answers))
    finally:
        subprocess.run(["docker", "rm", "--force", "--volumes", *started], capture_output=True)
        subprocess.run(["docker", "volume", "rm", volume], capture_output=True)
        subprocess.run(["docker", "network", "rm", network], capture_output=True)
