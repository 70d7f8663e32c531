"""Engines that read rendered Kubernetes manifests as a cluster would, for proof/tests/test_k8s_policies.py and
test_k8s_docker.py; proof/tests/test_kube.py checks each on small hand-made inputs. The lookups they build on are the
tests' own (tests/manifests.py).

- restricted_profile_violations: the Pod Security Standards restricted profile, as the namespace's admission
  controller applies it (https://kubernetes.io/docs/concepts/security/pod-security-standards/).
- connection_allowed: whether the NetworkPolicies let one pod reach another, or an address, on a port.
- fewest_replicas, evictions_allowed: how many pods a workload keeps, and how many a drain may evict under a budget.
- immutable_references: generated names and image tags in fields Kubernetes refuses to change.
- docker_run: a workload's pod spec as `docker run` options, so that Docker can run the image as the cluster would.

Hand-written because no library on PyPI evaluates these offline: kubernetes-validate checks schemas only, and
checkov checks single fields, not what a namespace's admission or a set of policies decides.
"""

import ipaddress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml
from manifests import all_containers, config_data, labels_match, named, parse_quantity, pod_template
from project import IMAGE

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


@dataclass(frozen=True)
class Peer:
    """One end of a connection: a pod (its namespace and labels, and its address where a rule needs one), or,
    with no namespace, an address outside every pod network: a node-local resolver, the internet."""

    namespace: str | None
    labels: dict
    address: str | None = None

    @property
    def namespace_labels(self) -> dict:
        return {"kubernetes.io/metadata.name": self.namespace}


def address_in_block(address: str | None, block: dict) -> bool:
    if address is None:
        return False
    ip = ipaddress.ip_address(address)
    return ip in ipaddress.ip_network(block["cidr"]) and not any(
        ip in ipaddress.ip_network(excepted) for excepted in block.get("except", []))


def peer_matches(rule_peers: list[dict] | None, peer: Peer, policy_namespace: str) -> bool:
    """Whether `peer` is among a rule's peers; a pod selector alone means pods of the policy's own namespace, and
    only pods match pod or namespace selectors."""
    if rule_peers is None:
        return True
    for rule_peer in rule_peers:
        if "ipBlock" in rule_peer:
            if address_in_block(peer.address, rule_peer["ipBlock"]):
                return True
            continue
        if peer.namespace is None:
            continue
        if "namespaceSelector" in rule_peer:
            namespace_ok = labels_match(rule_peer["namespaceSelector"], peer.namespace_labels)
        else:
            namespace_ok = peer.namespace == policy_namespace
        pod_ok = labels_match(rule_peer.get("podSelector", {}), peer.labels)
        if namespace_ok and pod_ok:
            return True
    return False


def port_matches(rule_ports: list[dict] | None, port: int, protocol: str) -> bool:
    return rule_ports is None or any(
        p.get("protocol", "TCP") == protocol and p.get("port") in (None, port) for p in rule_ports
    )


def direction_allows(manifests, direction: str, subject: Peer, other: Peer, port: int, protocol: str) -> bool:
    """Whether the policies selecting `subject` allow this connection in `direction` (Ingress or Egress): all of
    them if none selects it, else any rule of one that does."""
    policies = [doc["spec"] for doc in manifests if doc["kind"] == "NetworkPolicy"
                and doc["metadata"].get("namespace") == subject.namespace
                and labels_match(doc["spec"]["podSelector"], subject.labels)
                and direction in doc["spec"]["policyTypes"]]
    if not policies:
        return True
    peers_field = "from" if direction == "Ingress" else "to"
    return any(peer_matches(rule.get(peers_field), other, subject.namespace)
               and port_matches(rule.get("ports"), port, protocol)
               for policy in policies for rule in policy.get(direction.lower(), []))


def connection_allowed(manifests, source: Peer, destination: Peer, port: int, protocol: str = "TCP") -> bool:
    """Policies apply to pods only: a peer outside every pod network is never a policy's subject."""
    egress = source.namespace is None or direction_allows(manifests, "Egress", source, destination, port, protocol)
    ingress = destination.namespace is None or direction_allows(
        manifests, "Ingress", destination, source, port, protocol)
    return egress and ingress


def fewest_replicas(manifests: list[dict], workload: dict) -> int:
    """The fewest pods a workload runs: its autoscaler's minimum, else its replicas (1 when unset)."""
    for autoscaler in (doc for doc in manifests if doc["kind"] == "HorizontalPodAutoscaler"):
        if autoscaler["spec"]["scaleTargetRef"]["name"] == workload["metadata"]["name"]:
            return autoscaler["spec"].get("minReplicas", 1)
    return workload["spec"].get("replicas", 1)


def evictions_allowed(budget: dict, replicas: int) -> int:
    """How many of `replicas` healthy pods a drain may evict at once under this budget (integer budgets)."""
    if "maxUnavailable" in budget["spec"]:
        return budget["spec"]["maxUnavailable"]
    return replicas - budget["spec"]["minAvailable"]


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


@dataclass
class DockerRun:
    """A `docker run` reproducing one container of a rendered workload."""

    options: list[str]
    image: str
    args: list[str]

    def argv(self, *extra: str) -> list[str]:
        return ["docker", "run", *extra, *self.options, self.image, *self.args]


def docker_run(manifests: list[dict], workload: dict, files_dir: Path, container_name: str | None = None) -> DockerRun:
    """Derives `docker run` options from one container of the workload's rendered pod spec: the one named, which
    may be an init container, else its only container.

    ConfigMap and Secret volumes are written under `files_dir` and bind-mounted read-only; emptyDirs become
    tmpfs mounts; claims become named volumes. Not reproducible in Docker, and so left out: probes, preStop,
    ephemeral-storage limits, fsGroup's ownership change (files are written world-readable instead).
    """
    spec = pod_template(workload)["spec"]
    if container_name is None:
        [container] = spec["containers"]
    else:
        matching = [c for c in all_containers(spec) if c["name"] == container_name]
        if len(matching) != 1:
            raise ValueError(f"{named(workload)} has no container {container_name}")
        [container] = matching
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

