"""k8s/README.md's steps on a real cluster, kind, and what only a cluster can show.

The live tests (marked `kind`) run against the kind cluster that KIND_CLUSTER names, which must be kubectl's current
context, with the images `make build` tags: they run the README's steps as written (load both images, apply the
slim overlay, wait for db and web), then check: a note written and read back through a port-forward; web reaches
the database and pods elsewhere cannot; only the monitoring namespace reaches the metrics port; a `rollout restart`
under load fails no request; a database outage leaves web in its Service answering 503 JSON; deleting the database
pod loses no note; applying again after a ConfigMap change, and then the distroless overlay, succeeds. They change
the cluster they run on, so they skip, saying so, unless KIND_CLUSTER is set. .github/workflows/kubernetes.yml runs
them on every Kubernetes version in tests/project.py.

The offline tests below them check that workflow and the README's kind version.
"""

import json
import os
import re
import shutil
import subprocess
import uuid
from contextlib import contextmanager

import pytest
import requests
import yaml
from conftest import REPOSITORY, wait_until
from project import DEFAULT_VARIANT, IMAGE, KUBERNETES_VERSIONS, NAMESPACE, VARIANTS

CLUSTER = os.environ.get("KIND_CLUSTER")
README = REPOSITORY / "k8s" / "README.md"
WORKFLOW = REPOSITORY / ".github" / "workflows" / "kubernetes.yml"
# No NetworkPolicy here: clients that are not web, as another team's pods would be.
OUTSIDE = f"{NAMESPACE}-outside"
MONITORING = "monitoring"  # the one namespace web's NetworkPolicy admits on the metrics port
# README steps the live tests leave out: the workflow builds and creates the cluster (with a pinned node image)
# before them, and a port-forward runs until stopped (the tests open their own, on a free port).
NOT_RUN = ("make build", "kind create cluster", f"kubectl -n {NAMESPACE} port-forward")
# The first kind release whose default node runs each Kubernetes minor, from that release's notes (kind v0.31.0:
# "The default node image is now kindest/node:v1.35.0@sha256:452d707d...").
FIRST_KIND_DEFAULTING_TO = {"1.35": (0, 31, 0)}

live = pytest.mark.kind


def readme_cluster_steps() -> list[str]:
    """The commands of k8s/README.md's "Run it on a local cluster" block, one per logical line, without comments."""
    section = README.read_text().split("## Run it on a local cluster", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)[1]
    commands = [re.sub(r"\s+#.*$", "", line).strip() for line in block.replace("\\\n", " ").splitlines()]
    return [command for command in commands if command and not command.startswith("#")]


# ---------------------------------------------------------------------------------------------------------
# Talking to the cluster


def kubectl(*args: str, stdin: str | None = None, check: bool = True, timeout: int = 600):
    result = subprocess.run(["kubectl", f"--context=kind-{CLUSTER}", *args], input=stdin, capture_output=True,
                            text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"kubectl {' '.join(args)} exited {result.returncode}: {result.stderr}"
    return result


def pods(label: str, namespace: str = NAMESPACE) -> list[dict]:
    return json.loads(kubectl("-n", namespace, "get", "pods", "-l", f"app.kubernetes.io/name={label}",
                              "-o", "json").stdout)["items"]


def ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def web_settled() -> bool:
    """Every web pod ready and none terminating: what a port-forward then reaches is the current ReplicaSet."""
    found = pods("web")
    return bool(found) and all("deletionTimestamp" not in pod["metadata"] and ready(pod) for pod in found)


def roll_out_web():
    kubectl("-n", NAMESPACE, "rollout", "status", "deployment/web", "--timeout=5m")
    wait_until(web_settled, timeout=120, interval=1, what="the old web pods to be gone")


@contextmanager
def port_forward(target: str = "service/web", port: int = 8000):
    """`kubectl port-forward` on a free local port; yields the base URL."""
    process = subprocess.Popen(["kubectl", f"--context=kind-{CLUSTER}", "-n", NAMESPACE, "port-forward", target,
                                f":{port}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first_line = process.stdout.readline()
        found = re.search(r"127\.0\.0\.1:(\d+)", first_line)
        assert found, f"port-forward printed {first_line!r}: {process.stderr.read() if process.poll() else ''}"
        yield f"http://127.0.0.1:{found[1]}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def client_pod(namespace: str, name: str, code: str, *args: str, labels: dict | None = None) -> dict:
    """A one-shot pod running `python -c code args` from the slim image: restricted, so it passes the namespace
    `notes`' admission too."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {"app.kubernetes.io/name": "client"}},
        "spec": {
            "restartPolicy": "Never", "automountServiceAccountToken": False, "enableServiceLinks": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "client", "image": f"{IMAGE}:{DEFAULT_VARIANT}", "imagePullPolicy": "Never",
                "command": ["python", "-c", code, *args],
                "resources": {"requests": {"cpu": "50m", "memory": "64Mi"},
                              "limits": {"cpu": "500m", "memory": "128Mi"}},
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }


def start_client(namespace: str, prefix: str, code: str, *args: str, labels: dict | None = None) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    kubectl("apply", "-f", "-", stdin=json.dumps(client_pod(namespace, name, code, *args, labels=labels)))
    return name


def phase(namespace: str, name: str) -> str:
    return kubectl("-n", namespace, "get", "pod", name, "-o", "jsonpath={.status.phase}").stdout


def run_client(namespace: str, prefix: str, code: str, *args: str, labels: dict | None = None):
    """Runs a client pod to its end and returns what it printed last, as JSON."""
    name = start_client(namespace, prefix, code, *args, labels=labels)
    try:
        wait_until(lambda: phase(namespace, name) in {"Succeeded", "Failed"}, timeout=180, interval=1,
                   what=f"pod {namespace}/{name} to finish",
                   explain=lambda: kubectl("-n", namespace, "describe", "pod", name, check=False).stdout[-2000:])
        logs = kubectl("-n", namespace, "logs", name).stdout
        assert phase(namespace, name) == "Succeeded", logs
        return json.loads(logs.strip().splitlines()[-1])
    finally:
        kubectl("-n", namespace, "delete", "pod", name, "--wait=false", check=False)


# Tries a TCP connection to each host:port given and prints what happened to each.
CONNECT = """
import json, socket, sys
results = {}
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
        results[target] = "connected"
    except OSError as error:
        results[target] = type(error).__name__
print(json.dumps(results))
"""

# GETs / and one page of notes through the web Service, without end, printing the counts every second.
LOAD = """
import json, sys, time, urllib.request
base, counts, failures, printed = sys.argv[1], {"ok": 0, "failed": 0}, [], 0.0
while True:
    for path in ("/", "/api/notes?limit=1"):
        try:
            with urllib.request.urlopen(base + path, timeout=5) as response:
                response.read()
            counts["ok"] += 1
        except Exception as error:  # refused, reset, timed out, or any status but 2xx
            counts["failed"] += 1
            failures.append(f"{time.strftime('%H:%M:%S')} {path}: {error}")
    if time.monotonic() - printed >= 1:
        print(json.dumps({**counts, "failures": failures[-10:]}), flush=True)
        printed = time.monotonic()
    time.sleep(0.05)
"""

# GETs the notes through the web Service for some seconds and counts the answers: status and error code.
ANSWERS = """
import collections, json, sys, time, urllib.error, urllib.request
url, seconds, answers = sys.argv[1], float(sys.argv[2]), collections.Counter()
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            answers[str(response.status)] += 1
    except urllib.error.HTTPError as error:
        answers[f"{error.code} {json.load(error)['error']['code']}"] += 1
    except Exception as error:
        answers[type(error).__name__] += 1
    time.sleep(0.5)
print(json.dumps(answers))
"""


def create_note(base: str, text: str) -> dict:
    response = requests.post(f"{base}/api/notes", json={"text": text}, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()


# ---------------------------------------------------------------------------------------------------------
# Fixtures: the cluster, the README's steps run on it, the clients' namespaces


@pytest.fixture(scope="module")
def cluster():
    if not CLUSTER:
        pytest.skip("KIND_CLUSTER is not set: these tests deploy into a kind cluster, see k8s/README.md")
    assert shutil.which("kind") and shutil.which("kubectl"), "KIND_CLUSTER is set, but kind or kubectl is not on PATH"
    clusters = subprocess.run(["kind", "get", "clusters"], capture_output=True, text=True, check=True).stdout.split()
    assert CLUSTER in clusters, f"kind has no cluster {CLUSTER}: {clusters}"
    # The README's commands use kubectl's current context: it must be this cluster, not whatever else it points at.
    context = subprocess.run(["kubectl", "config", "current-context"], capture_output=True, text=True).stdout.strip()
    assert context == f"kind-{CLUSTER}", f"kubectl's context is {context!r}: kubectl config use-context kind-{CLUSTER}"
    return CLUSTER


@pytest.fixture(scope="module")
def readme_run(cluster, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Each README step, as written, in a scratch directory (the image archive lands there) that sees k8s/."""
    scratch = tmp_path_factory.mktemp("readme")
    (scratch / "k8s").symlink_to(REPOSITORY / "k8s")
    done = {}
    for command in readme_cluster_steps():
        if command.startswith(NOT_RUN):
            continue
        result = subprocess.run(["bash", "-o", "pipefail", "-ec", command], cwd=scratch, capture_output=True,
                                text=True, timeout=900, env={**os.environ, "KIND_CLUSTER_NAME": cluster})
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        done[command] = result
    wait_until(web_settled, timeout=120, interval=1, what="web to settle")
    return done


@pytest.fixture(scope="module")
def client_namespaces(cluster):
    created = []
    for namespace in (OUTSIDE, MONITORING):
        if kubectl("create", "namespace", namespace, check=False).returncode == 0:
            created.append(namespace)
    yield
    for namespace in created:
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)


# ---------------------------------------------------------------------------------------------------------
# Live


@live
def test_the_readme_steps_apply_the_slim_overlay_into_the_restricted_namespace_without_a_warning(readme_run):
    [apply] = [result for command, result in readme_run.items() if command.startswith("kubectl apply -k")]
    assert apply.args[-1].endswith(f"kubectl apply -k k8s/overlays/{DEFAULT_VARIANT}")
    # Pod Security admission warns here about anything the restricted profile would refuse.
    assert "Warning" not in apply.stderr, apply.stderr
    labels = json.loads(kubectl("get", "namespace", NAMESPACE, "-o", "json").stdout)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


@live
def test_each_web_pod_migrated_in_its_init_container_before_serving(readme_run):
    [logs] = [result.stdout for command, result in readme_run.items() if "-c migrate" in command]
    assert re.search(r"migrated the schema to version \d+|the schema is already up to date", logs), logs
    for pod in pods("web"):
        [status] = pod["status"]["initContainerStatuses"]
        assert status["state"]["terminated"]["exitCode"] == 0


@live
def test_a_note_created_through_a_port_forward_is_read_back(readme_run):
    with port_forward() as base:
        assert requests.get(f"{base}/", timeout=10).text == "Hello, Kubernetes!"
        note = create_note(base, f"written through a port-forward {uuid.uuid4()}")
        assert requests.get(f"{base}/api/notes/{note['id']}", timeout=10).json() == note


@live
def test_web_reaches_the_database_and_pods_that_are_not_web_cannot(readme_run, client_namespaces):
    db_ip = kubectl("-n", NAMESPACE, "get", "pod", "db-0", "-o", "jsonpath={.status.podIP}").stdout
    db_by_name, web_by_name = f"db.{NAMESPACE}.svc.cluster.local:5432", f"web.{NAMESPACE}.svc.cluster.local:8000"
    outside = run_client(OUTSIDE, "intruder", CONNECT, db_by_name, f"{db_ip}:5432", web_by_name)
    # The same pod reaches web: its network and DNS work, so what stops it at the database is the policy.
    assert outside[web_by_name] == "connected", outside
    assert outside[db_by_name] != "connected" and outside[f"{db_ip}:5432"] != "connected", outside
    # A pod in the namespace that is not web: the default deny stops it before the database's policy does.
    inside = run_client(NAMESPACE, "intruder", CONNECT, f"{db_ip}:5432", labels={"app.kubernetes.io/name": "debug"})
    assert inside[f"{db_ip}:5432"] != "connected", inside
    web = kubectl("-n", NAMESPACE, "exec", "deployment/web", "-c", "web", "--", "python", "-c", CONNECT, "db:5432")
    assert json.loads(web.stdout) == {"db:5432": "connected"}


@live
def test_only_the_monitoring_namespace_reaches_webs_metrics_port(readme_run, client_namespaces):
    web_ip = pods("web")[0]["status"]["podIP"]
    assert run_client(MONITORING, "prometheus", CONNECT, f"{web_ip}:9000") == {f"{web_ip}:9000": "connected"}
    outside = run_client(OUTSIDE, "scraper", CONNECT, f"{web_ip}:9000", f"{web_ip}:8000")
    assert outside[f"{web_ip}:9000"] != "connected" and outside[f"{web_ip}:8000"] == "connected", outside


@live
def test_a_rollout_restart_under_load_fails_no_request(readme_run, client_namespaces):
    name = start_client(OUTSIDE, "load", LOAD, f"http://web.{NAMESPACE}.svc.cluster.local:8000")

    def progress():
        logs = kubectl("-n", OUTSIDE, "logs", name, check=False).stdout.strip().splitlines()
        return json.loads(logs[-1]) if logs else None

    try:
        start = wait_until(lambda: (counts := progress()) and counts["ok"] >= 20 and counts, timeout=180,
                           interval=1, what="the load to start")
        kubectl("-n", NAMESPACE, "rollout", "restart", "deployment/web")
        roll_out_web()
        # A few more seconds against the new pods only.
        after = wait_until(lambda: (counts := progress())["ok"] >= start["ok"] + 100 and counts, timeout=120,
                           interval=1, what="requests after the rollout")
    finally:
        kubectl("-n", OUTSIDE, "delete", "pod", name, "--wait=false", check=False)
    assert after["failed"] == 0, after["failures"]


@live
def test_during_a_database_outage_web_stays_in_its_service_and_answers_503_json(readme_run, client_namespaces):
    kubectl("-n", NAMESPACE, "scale", "statefulset/db", "--replicas=0")
    try:
        wait_until(lambda: not pods("db"), timeout=180, interval=1, what="the db pod to be gone")
        # 30 s: three times what readiness would need (5 s × 2 failures) to take every pod out of the Service.
        answers = run_client(OUTSIDE, "outage", ANSWERS, f"http://web.{NAMESPACE}.svc.cluster.local:8000/api/notes",
                             "30")
    finally:
        kubectl("-n", NAMESPACE, "scale", "statefulset/db", "--replicas=1")
        kubectl("-n", NAMESPACE, "rollout", "status", "statefulset/db", "--timeout=5m")
    assert set(answers) == {"503 service_unavailable"}, answers
    with port_forward() as base:
        wait_until(lambda: requests.get(f"{base}/readyz", timeout=10).status_code == 200, timeout=120,
                   what="web to reach the database again")


@live
def test_deleting_the_database_pod_keeps_every_note(readme_run):
    with port_forward() as base:
        notes = [create_note(base, f"kept through a db restart {uuid.uuid4()}") for _ in range(3)]
    old_uid = kubectl("-n", NAMESPACE, "get", "pod", "db-0", "-o", "jsonpath={.metadata.uid}").stdout
    kubectl("-n", NAMESPACE, "delete", "pod", "db-0")

    def replaced_and_ready():
        [pod] = pods("db") or [None]
        return pod and pod["metadata"]["uid"] != old_uid and ready(pod)

    wait_until(replaced_and_ready, timeout=300, interval=1, what="a new, ready db-0")
    with port_forward() as base:
        def read_back():
            answers = [requests.get(f"{base}/api/notes/{note['id']}", timeout=10) for note in notes]
            return all(answer.status_code == 200 for answer in answers) and [answer.json() for answer in answers]

        assert wait_until(read_back, timeout=120, interval=1, what="the notes after the restart") == notes


@live
def test_applying_again_after_a_configmap_change_succeeds_and_rolls_web_onto_it(readme_run, tmp_path):
    # As a team changes a literal: a kustomization of its own on top of the overlay.
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(REPOSITORY / "k8s" / "overlays" / DEFAULT_VARIANT, tmp_path)],
        "configMapGenerator": [{"name": "web", "behavior": "merge", "literals": ["NAME=Kind"]}],
    }))
    applied = kubectl("apply", "-k", str(tmp_path))
    assert "Warning" not in applied.stderr, applied.stderr
    roll_out_web()
    with port_forward() as base:
        assert requests.get(f"{base}/", timeout=10).text == "Hello, Kind!"


@live
def test_switching_overlays_applies_and_runs_the_other_image_with_the_same_notes(readme_run):
    other = next(variant for variant in VARIANTS if variant != DEFAULT_VARIANT)
    with port_forward() as base:
        note = create_note(base, f"written before switching to {other} {uuid.uuid4()}")
    applied = kubectl("apply", "-k", str(REPOSITORY / "k8s" / "overlays" / other), timeout=300)
    assert "Warning" not in applied.stderr, applied.stderr
    roll_out_web()
    images = {container["image"] for pod in pods("web")
              for container in [*pod["spec"]["initContainers"], *pod["spec"]["containers"]]}
    assert images == {f"{IMAGE}:{other}"}
    with port_forward() as base:
        assert requests.get(f"{base}/", timeout=10).text == "Hello, Kubernetes!"
        assert requests.get(f"{base}/api/notes/{note['id']}", timeout=10).json() == note


# ---------------------------------------------------------------------------------------------------------
# Offline: the workflow that runs the above, and the README's kind version


def kind_job() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())["jobs"]["kind"]


def test_the_kind_job_runs_every_supported_version_on_a_node_image_pinned_by_digest():
    rows = kind_job()["strategy"]["matrix"]["include"]
    assert [row["kubernetes"] for row in rows] == list(KUBERNETES_VERSIONS)
    for row in rows:
        node = re.fullmatch(r"kindest/node:(v(\d+\.\d+)\.\d+)@sha256:[0-9a-f]{64}", row["node-image"])
        assert node and node[2] == row["kubernetes"], row
        # kubectl of the same release: within the supported skew of every node it talks to.
        assert row["kubectl"] == node[1], row


def test_the_kind_job_takes_its_node_images_from_the_release_notes_of_the_kind_it_installs():
    text = WORKFLOW.read_text()
    installed = [step["with"]["version"] for step in kind_job()["steps"]
                 if step.get("uses", "").startswith("helm/kind-action@")]
    assert installed and re.fullmatch(r"v\d+\.\d+\.\d+", installed[0])
    # Node images are built for one kind release; its notes list them with their digests.
    assert f"kind {installed[0]}'s release notes" in text
    assert tuple(map(int, installed[0][1:].split("."))) >= FIRST_KIND_DEFAULTING_TO[KUBERNETES_VERSIONS[0]]


def test_the_readme_asks_for_a_kind_whose_default_node_runs_the_oldest_supported_version():
    floor = re.search(r"\[kind\]\([^)]*\) v(\d+)\.(\d+)\.(\d+) or later", README.read_text())
    assert floor, "k8s/README.md names no minimum kind version"
    assert tuple(map(int, floor.groups())) >= FIRST_KIND_DEFAULTING_TO[KUBERNETES_VERSIONS[0]]


def test_the_readme_steps_the_live_tests_run_include_loading_applying_and_waiting():
    run = [command for command in readme_cluster_steps() if not command.startswith(NOT_RUN)]
    assert any(command.startswith("docker image save --platform") for command in run)
    assert f"kind load image-archive {IMAGE}.tar" in run
    assert not any(command.startswith("kind load docker-image") for command in run), "fails with containerd's store"
    assert f"kubectl apply -k k8s/overlays/{DEFAULT_VARIANT}" in run
    for workload in ("statefulset/db", "deployment/web"):
        assert f"kubectl -n {NAMESPACE} rollout status {workload} --timeout=5m" in run
    assert not any("--watch" in command for command in run), "a step that never returns"
