"""k8s/README.md's steps on a real cluster, and what only a real cluster shows.

The live tests (marked `cluster`) deploy into the cluster of the kubectl context CLUSTER_CONTEXT names, which must be
kubectl's current context, with the images `make build` tags: kind's (`kind-<name>`), or the one .ci/cluster/ builds
from Go modules on machines that reach no registry. They run the README's steps as written (load both images,
apply the slim overlay, wait for db and web); where CLUSTER_LOAD is set, it loads the images in place of the
README's kind steps (`CLUSTER_LOAD="bash .ci/cluster/load"`: it takes `IMAGE[=NAME]...`). Then they check: every
overlay and component passes the API server's own admission; a note written and read back through a port-forward;
web reaches the database and pods elsewhere cannot; only the monitoring namespace reaches the metrics port; a
`rollout restart` under load fails no request; a drain takes web's pods one at a time; a database outage leaves web
in its Service answering 503 JSON; deleting the database pod loses no note; the backup CronJob's archive restores
the notes; applying again after a ConfigMap change, and then the distroless overlay, succeeds. They change the
cluster they run on, so they skip, saying so, unless CLUSTER_CONTEXT is set. .github/workflows/kubernetes.yml runs
them on kind for every Kubernetes version in tests/project.py, `bash .ci/run` on .ci/cluster/'s.

The offline tests below them check that workflow and the README's kind version.
"""

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import uuid
from contextlib import contextmanager

import pytest
import requests
import yaml
from conftest import REPOSITORY, wait_until
from project import DEFAULT_VARIANT, IMAGE, KUBERNETES_VERSIONS, NAMESPACE, VARIANTS, make_default, make_values
from renderings import COMPONENTS, render

import backup

CONTEXT = os.environ.get("CLUSTER_CONTEXT")
# A command that copies images from the Docker engine into the cluster's node, given IMAGE[=NAME_IN_THE_CLUSTER]...
LOADER = os.environ.get("CLUSTER_LOAD")
README = REPOSITORY / "k8s" / "README.md"
WORKFLOW = REPOSITORY / ".github" / "workflows" / "kubernetes.yml"
# No NetworkPolicy here: clients that are not web, as another team's pods would be.
OUTSIDE = f"{NAMESPACE}-outside"
MONITORING = "monitoring"  # the one namespace web's NetworkPolicy admits on the metrics port
# README steps the live tests leave out: the workflow builds and creates the cluster (with a pinned node image)
# before them, and a port-forward runs until stopped (the tests open their own, on a free port).
NOT_RUN = ("make build", "kind create cluster", f"kubectl -n {NAMESPACE} port-forward")
# The README's steps that copy the images into kind's node: CLUSTER_LOAD replaces them on another cluster.
KIND_LOAD = ("docker image save", "kind load")
# The first kind release whose default node runs each Kubernetes minor, from that release's notes (kind v0.31.0:
# "The default node image is now kindest/node:v1.35.0@sha256:452d707d...").
FIRST_KIND_DEFAULTING_TO = {"1.35": (0, 31, 0)}

live = pytest.mark.cluster


def readme_cluster_steps() -> list[str]:
    """The commands of k8s/README.md's "Run it on a local cluster" block, one per logical line, without comments."""
    section = README.read_text().split("## Run it on a local cluster", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)[1]
    commands = [re.sub(r"\s+#.*$", "", line).strip() for line in block.replace("\\\n", " ").splitlines()]
    return [command for command in commands if command and not command.startswith("#")]


# ---------------------------------------------------------------------------------------------------------
# Talking to the cluster


def kubectl(*args: str, stdin: str | None = None, check: bool = True, timeout: int = 600):
    result = subprocess.run(["kubectl", f"--context={CONTEXT}", *args], input=stdin, capture_output=True,
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
    process = subprocess.Popen(["kubectl", f"--context={CONTEXT}", "-n", NAMESPACE, "port-forward", target,
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


def images_to_load() -> list[str]:
    """Both variants, and each base image the manifests run (postgres) that make takes from elsewhere here (a
    stand-in, a mirror), under the name the manifests ask for."""
    images = [f"{IMAGE}:{variant}" for variant in VARIANTS]
    upstream, here = make_default("POSTGRES_IMAGE"), make_values()["POSTGRES_IMAGE"]
    return images if here == upstream else [*images, f"{here}={upstream}"]


@pytest.fixture(scope="module")
def cluster():
    if not CONTEXT:
        pytest.skip("CLUSTER_CONTEXT is not set: these tests deploy into the cluster of that kubectl context "
                    "(kind's, or .ci/cluster's), see k8s/README.md")
    assert shutil.which("kubectl"), "CLUSTER_CONTEXT is set, but kubectl is not on PATH"
    # The README's commands use kubectl's current context: it must be this cluster, not whatever else it points at.
    context = subprocess.run(["kubectl", "config", "current-context"], capture_output=True, text=True).stdout.strip()
    assert context == CONTEXT, f"kubectl's context is {context!r}: kubectl config use-context {CONTEXT}"
    if not LOADER:
        assert CONTEXT.startswith("kind-") and shutil.which("kind"), \
            f"{CONTEXT} is not kind's, or kind is not on PATH: set CLUSTER_LOAD to the command that loads images"
        name = CONTEXT.removeprefix("kind-")
        clusters = subprocess.run(["kind", "get", "clusters"], capture_output=True, text=True, check=True).stdout
        assert name in clusters.split(), f"kind has no cluster {name}: {clusters.split()}"
    return CONTEXT


@pytest.fixture(scope="module")
def readme_run(cluster, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Each README step, as written, in a scratch directory (the image archive lands there) that sees k8s/; with
    CLUSTER_LOAD, that command in place of the kind steps that load the images."""
    scratch = tmp_path_factory.mktemp("readme")
    (scratch / "k8s").symlink_to(REPOSITORY / "k8s")
    steps = [command for command in readme_cluster_steps() if not command.startswith(NOT_RUN)]
    loading = None
    if LOADER:
        first = next(i for i, command in enumerate(steps) if command.startswith(KIND_LOAD))
        loading = " ".join([LOADER, *map(shlex.quote, images_to_load())])
        steps = [*steps[:first], loading,
                 *(command for command in steps[first:] if not command.startswith(KIND_LOAD))]
    environment = {**os.environ, "KIND_CLUSTER_NAME": cluster.removeprefix("kind-")}
    done = {}
    for command in steps:
        # CLUSTER_LOAD from the repository's root, as `bash .ci/cluster/load` runs.
        where = REPOSITORY if command == loading else scratch
        result = subprocess.run(["bash", "-o", "pipefail", "-ec", command], cwd=where, capture_output=True,
                                text=True, timeout=900, env=environment)
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


def missing_api(doc: dict) -> str | None:
    """The group/version of `doc` when the API server serves none (a CRD not installed), else None."""
    version = doc["apiVersion"]
    path = f"/apis/{version}" if "/" in version else f"/api/{version}"
    return None if kubectl("get", "--raw", path, check=False).returncode == 0 else f"{doc['kind']} ({version})"


@live
@pytest.mark.parametrize("overlay, added", [(variant, component) for variant in VARIANTS
                                             for component in (None, *COMPONENTS)],
                         ids=lambda value: value or "alone")
def test_every_overlay_and_component_passes_the_api_servers_admission_without_a_warning(readme_run, overlay, added):
    rendered = render(overlay, (added,) if added else ())
    docs = [doc for doc in yaml.safe_load_all(rendered) if doc]
    missing = sorted({api for doc in docs if (api := missing_api(doc))})
    if missing:
        pytest.skip(f"the cluster serves no {', '.join(missing)}: install its CRD to check {added}")
    # The real admission chain: schemas, defaulting, Pod Security restricted (enforced on pods, warned about on the
    # workloads that make them), and each CRD's own validation.
    applied = kubectl("apply", "--dry-run=server", "-f", "-", stdin=rendered)
    assert "Warning" not in applied.stderr, applied.stderr
    assert applied.stdout.count("(server dry run)") == len(docs), applied.stdout


@live
def test_the_api_server_refuses_a_pod_below_the_restricted_profile_in_the_namespace(readme_run):
    # The client pod, which passes, with one field taken away: what the namespace's label really enforces.
    labels = json.loads(kubectl("get", "namespace", NAMESPACE, "-o", "json").stdout)["metadata"]["labels"]
    profile = f'restricted:{labels["pod-security.kubernetes.io/enforce-version"]}'
    allowed = kubectl("apply", "--dry-run=server", "-f", "-", stdin=json.dumps(client_pod(NAMESPACE, "fits", "")))
    assert "Warning" not in allowed.stderr, allowed.stderr
    pod = client_pod(NAMESPACE, "unconfined", "")
    del pod["spec"]["securityContext"]["seccompProfile"]
    refused = kubectl("apply", "--dry-run=server", "-f", "-", stdin=json.dumps(pod), check=False)
    assert refused.returncode != 0 and f'violates PodSecurity "{profile}"' in refused.stderr, refused.stderr
    assert "seccompProfile" in refused.stderr


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
def test_a_drain_evicts_web_pods_one_at_a_time_and_web_keeps_serving(readme_run):
    before = {pod["metadata"]["name"]: pod for pod in pods("web")}
    assert len(before) >= 2, "the autoscaler keeps two web pods"
    node = next(iter(before.values()))["spec"]["nodeName"]
    try:
        # web's pods alone: the node's other pods (db, DNS) are not what the budget is about. The evicted pod's
        # replacement cannot start on the cordoned node, so the budget must stop the second eviction.
        drained = kubectl("drain", node, "--pod-selector=app.kubernetes.io/name=web", "--delete-emptydir-data",
                          "--timeout=30s", check=False)
        left = [pod for pod in pods("web") if pod["metadata"]["name"] in before]
        with port_forward() as base:
            answer = requests.get(f"{base}/", timeout=10)
    finally:
        kubectl("uncordon", node)
    assert drained.returncode != 0, drained.stdout
    assert "disruption budget" in drained.stderr, drained.stderr
    assert len(left) == len(before) - 1 and all(ready(pod) for pod in left), [p["metadata"]["name"] for p in left]
    assert answer.status_code == 200
    roll_out_web()


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


def backup_reader(name: str) -> dict:
    """A pod that mounts the backup component's claim, as k8s/README.md says to copy an archive out of it: the
    CronJob's own pod, sleeping instead of dumping."""
    rendered = yaml.safe_load_all(render(DEFAULT_VARIANT, ("backup",)))
    cronjob = next(doc for doc in rendered if doc and doc["kind"] == "CronJob")
    spec = copy.deepcopy(cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    spec["containers"][0]["command"] = ["sleep", "600"]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec}


def in_db(script: str, stdin: bytes) -> bytes:
    """A shell script in db-0's postgres container, as backup.py runs one in Compose's db."""
    result = subprocess.run(["kubectl", f"--context={CONTEXT}", "-n", NAMESPACE, "exec", "-i", "db-0", "-c",
                             "postgres", "--", "sh", "-c", script], input=stdin, capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


@live
def test_the_backup_cronjob_run_once_writes_an_archive_that_restores_the_notes(readme_run, tmp_path):
    if "backup" not in COMPONENTS:
        pytest.skip("k8s/components/backup was deleted: nothing to back up with")
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(REPOSITORY / "k8s" / "overlays" / DEFAULT_VARIANT, tmp_path)],
        "components": [os.path.relpath(REPOSITORY / "k8s" / "components" / "backup", tmp_path)],
    }))
    applied = kubectl("apply", "-k", str(tmp_path))
    assert "Warning" not in applied.stderr, applied.stderr
    with port_forward() as base:
        kept = create_note(base, f"in the backup {uuid.uuid4()}")
        # k8s/README.md's command: one now, without waiting for the night.
        job = f"db-backup-{uuid.uuid4().hex[:6]}"
        kubectl("-n", NAMESPACE, "create", "job", "--from=cronjob/db-backup", job)
        kubectl("-n", NAMESPACE, "wait", "--for=condition=Complete", f"job/{job}", "--timeout=180s")
        line = kubectl("-n", NAMESPACE, "logs", f"job/{job}").stdout.strip().splitlines()[-1]
        archive = re.fullmatch(r"(/backups/notes-\d{8}T\d{6}Z\.dump): \d+ bytes, (\d+) notes", line)
        assert archive and int(archive[2]) >= 1, line
        later = create_note(base, f"written after the backup {uuid.uuid4()}")
    reader = f"backup-reader-{uuid.uuid4().hex[:6]}"
    kubectl("apply", "-f", "-", stdin=json.dumps(backup_reader(reader)))
    try:
        kubectl("-n", NAMESPACE, "wait", "--for=condition=Ready", f"pod/{reader}", "--timeout=120s")
        dump = subprocess.run(["kubectl", f"--context={CONTEXT}", "-n", NAMESPACE, "exec", reader, "--", "cat",
                               archive[1]], capture_output=True, timeout=60, check=True).stdout
    finally:
        kubectl("-n", NAMESPACE, "delete", "pod", reader, "--wait=false", check=False)
    # backup.py's restore, step by step, into db-0: the archive read back in full, the schema replaced in one
    # transaction, then migrate, which each new web pod runs first.
    script = in_db(backup.PG_RESTORE_SCRIPT, dump)
    assert len(backup.NOTES_COPY.search(script.decode())[1].splitlines()) == int(archive[2])
    in_db(backup.PSQL, backup.RESET_SCHEMA.encode() + script)
    kubectl("-n", NAMESPACE, "rollout", "restart", "deployment/web")
    roll_out_web()
    with port_forward() as base:
        assert requests.get(f"{base}/api/notes/{kept['id']}", timeout=10).json() == kept
        assert requests.get(f"{base}/api/notes/{later['id']}", timeout=10).status_code == 404


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
