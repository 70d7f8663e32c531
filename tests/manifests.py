"""Lookups in rendered Kubernetes manifests, for the tests: a document by kind and name, its pod template and
containers, a ConfigMap's or Secret's data, whether a label selector matches, and a quantity (64Mi, 500m) as a number.
"""

import base64


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
