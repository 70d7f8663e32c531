"""CI ships what it scanned: .github/workflows/ci.yml builds each variant once per run, for every platform, and
its smoke tests, trivy gates, push, signature and attestation all take that one build's output.

Read from the workflow file, not run: no runner here reaches a registry. Each wiring check is a function that
returns what it found wrong, so that the last tests can prove it catches a rebuild or a scan of another image.
"""

import copy
import re

import pytest
import yaml
from conftest import REPOSITORY
from project import DEFAULT_VARIANT, IMAGE, VARIANTS, dockerfile

WORKFLOWS = REPOSITORY / ".github" / "workflows"
CI = yaml.safe_load((WORKFLOWS / "ci.yml").read_text())
PUBLISH_IF = "github.event_name == 'push' && github.ref == 'refs/heads/main'"
# A step that makes an image: an action that builds, or a command line that does.
BUILD_ACTIONS = ("docker/build-push-action@", "docker/bake-action@")
BUILD_COMMAND = re.compile(r"\b(docker\s+(buildx\s+)?(build|bake)|buildx\s+(build|bake)|podman\s+build|buildah\s+"
                           r"(bud|build)|compose\s+build|make\s+build)\b")
# A step that puts something in a registry, or signs or attests what is there.
PUSH_COMMAND = re.compile(r"\b(docker\s+push|skopeo\s+copy\b.*\bdocker://|crane\s+(push|copy)|oras\s+(push|cp)|"
                          r"imagetools\s+create|cosign\s+(sign|attest))\b")


def expression(text):
    return f"${{{{ {text} }}}}"


def steps(workflow, job):
    return workflow["jobs"][job]["steps"]


def step_with_id(workflow, job, step_id):
    return next(step for step in steps(workflow, job) if step.get("id") == step_id)


def uses(step, action):
    return step.get("uses", "").startswith(action)


def builds_an_image(step):
    return any(uses(step, action) for action in BUILD_ACTIONS) or bool(BUILD_COMMAND.search(step.get("run", "")))


def platforms(workflow):
    return workflow["env"]["PLATFORMS"].split(",")


def shipping_builds(workflow):
    """Every step that builds an image, outside the test job (whose `make test` builds the suite's own images,
    with planted secrets, for the tests alone): (job, step name)."""
    return [(job, step.get("name", step.get("uses"))) for job in workflow["jobs"] if job != "test"
            for step in steps(workflow, job) if builds_an_image(step)]


def scan_problems(workflow):
    """What is wrong between the build and what the image job runs and scans."""
    problems = []
    build = step_with_id(workflow, "image", "build")
    if build["with"].get("outputs") != "type=oci,dest=" + expression("env.ARCHIVE"):
        problems.append(f"the build writes {build['with'].get('outputs')}, not the archive")
    if build["with"].get("push") or build["with"].get("load"):
        problems.append("the build also pushes or loads an image of its own")
    load = step_with_id(workflow, "image", "load")
    if load["env"].get("DIGEST") != expression("steps.build.outputs.digest") or \
            '"oci-archive:$ARCHIVE"' not in load["run"] or '> "$ARCHIVE.digest"' not in load["run"]:
        problems.append("the load step does not check and load the build's archive against the build's digest")
    smoke = next(step for step in steps(workflow, "image") if step.get("name", "").startswith("Smoke test"))
    if smoke.get("env", {}).get("IMAGES") != expression("steps.load.outputs.images") or "docker build" in smoke["run"]:
        problems.append("the smoke test runs something else than the images loaded from the archive")
    scanned = [step["with"].get("image-ref") or step["with"].get("input") for step in steps(workflow, "image")
               if uses(step, "aquasecurity/trivy-action@")]
    wanted = [expression(f"steps.load.outputs.{platform.removeprefix('linux/')}") for platform in platforms(workflow)]
    if sorted(scanned) != sorted(wanted):
        problems.append(f"trivy scans {scanned}, not each platform loaded from the archive: {wanted}")
    return problems


def publish_problems(workflow):
    """What is wrong between the archive the image job scanned and what publish pushes, signs and attests."""
    problems = []
    image, publish = workflow["jobs"]["image"], workflow["jobs"]["publish"]
    kept = next(step for step in image["steps"] if uses(step, "actions/upload-artifact@"))
    if kept["with"]["path"].splitlines() != [expression("env.ARCHIVE"), expression("env.ARCHIVE") + ".digest"] or \
            kept.get("if") != PUBLISH_IF:
        problems.append("the image job does not keep its archive and the build's digest for publish")
    fetched = [step for step in publish["steps"] if uses(step, "actions/download-artifact@")]
    if [step["with"]["name"] for step in fetched] != [kept["with"]["name"]] or publish["env"] != {
            "ARCHIVE": image["env"]["ARCHIVE"]}:
        problems.append("publish does not take the image job's archive")
    push = step_with_id(workflow, "publish", "push")
    command = re.search(r"skopeo copy (.*)", push.get("run", ""))
    if not command or set(command[1].split()) < {"--all", "--preserve-digests", '"oci-archive:$ARCHIVE"'} or \
            'digest=$(cat "$ARCHIVE.digest")' not in push.get("run", ""):
        problems.append("publish does not push the archive, every platform, with the digest the build reported")
    named = expression(f"steps.{push['id']}.outputs.digest")
    attest = next(step for step in publish["steps"] if uses(step, "actions/attest-build-provenance@"))
    sign = next(step for step in publish["steps"] if "cosign sign" in step.get("run", ""))
    if attest["with"].get("subject-digest") != named or sign.get("env", {}).get("DIGEST") != named:
        problems.append("the signature or the attestation names another digest than the pushed one")
    return problems


def test_each_variant_is_built_by_one_step_per_run_from_its_dockerfile():
    assert shipping_builds(CI) == [("image", "Build once, for every platform, with an SBOM and provenance each")]
    matrix = CI["jobs"]["image"]["strategy"]["matrix"]
    assert {row["variant"]: row["dockerfile"] for row in matrix["include"]} == {v: dockerfile(v) for v in VARIANTS}
    assert step_with_id(CI, "image", "build")["with"]["file"] == expression("matrix.dockerfile")


def test_the_build_covers_amd64_and_arm64_with_an_sbom_and_provenance_and_arm64_runs_under_qemu():
    assert set(platforms(CI)) == {"linux/amd64", "linux/arm64"}
    build = step_with_id(CI, "image", "build")
    assert build["with"]["platforms"] == expression("env.PLATFORMS")
    assert (build["with"]["sbom"], build["with"]["provenance"]) == (True, "mode=max")
    names = [step.get("uses", "").split("@")[0] for step in steps(CI, "image")]
    qemu = steps(CI, "image")[names.index("docker/setup-qemu-action")]
    assert names.index("docker/setup-qemu-action") < names.index("docker/setup-buildx-action")
    assert "arm64" in qemu["with"]["platforms"].split(",")
    # The binfmt image runs privileged on the build's runner: a release, never `latest`.
    assert re.fullmatch(r"docker\.io/tonistiigi/binfmt:qemu-v[\d.]+-\d+(@sha256:[0-9a-f]{64})?", qemu["with"]["image"])
    # The load step checks that the archive holds exactly these platforms, each with its SBOM and provenance.
    load = step_with_id(CI, "image", "load")["run"]
    assert "${PLATFORMS//,/ }" in load and "spdx.dev/Document" in load and "slsa.dev/provenance" in load


def test_the_smoke_tests_and_trivy_take_each_platform_of_that_build_and_nothing_else():
    assert scan_problems(CI) == []


def test_publish_pushes_signs_and_attests_the_archive_the_image_job_built_ran_and_scanned():
    assert publish_problems(CI) == []
    assert CI["jobs"]["publish"]["needs"] == "image"
    assert not any("uses" in step and step["uses"].startswith("actions/checkout@")
                   for step in steps(CI, "publish")), "publish needs no source: it builds nothing"


def test_a_rebuild_in_publish_or_a_scan_of_another_image_is_caught():
    rebuilt = copy.deepcopy(CI)
    steps(rebuilt, "publish").insert(3, {"name": "Build and push", "id": "push", "uses":
                                         "docker/build-push-action@263435318d21b8e681c14492fe198d362a7d2c83",
                                         "with": {"push": True}})
    assert len(shipping_builds(rebuilt)) == 2 and publish_problems(rebuilt)
    rescanned = copy.deepcopy(CI)
    trivy = next(step for step in steps(rescanned, "image") if uses(step, "aquasecurity/trivy-action@"))
    trivy["with"]["image-ref"] = expression("env.IMAGE_NAME") + ":slim"
    assert scan_problems(rescanned)
    loaded = copy.deepcopy(CI)
    step_with_id(loaded, "image", "build")["with"]["load"] = True
    assert scan_problems(loaded)
    rebuilt_by_hand = copy.deepcopy(CI)
    rebuild = f"docker buildx build --load -t {IMAGE}:{DEFAULT_VARIANT} ."
    steps(rebuilt_by_hand, "image").insert(6, {"run": rebuild})
    assert len(shipping_builds(rebuilt_by_hand)) == 2


def test_pull_requests_and_the_nightly_run_push_sign_and_keep_nothing():
    pushing = {job for job, body in CI["jobs"].items() for step in body["steps"]
               if step.get("with", {}).get("push") is True or PUSH_COMMAND.search(step.get("run", ""))
               or uses(step, "actions/attest-build-provenance@")}
    assert pushing == {"publish"}
    assert CI["jobs"]["publish"]["if"] == PUBLISH_IF
    kept = [step for step in steps(CI, "image") if uses(step, "actions/upload-artifact@")]
    assert [step.get("if") for step in kept] == [PUBLISH_IF]


def test_the_nightly_run_rebuilds_without_cache_on_pulled_bases_and_trivy_gates_every_platform():
    on = CI.get("on", CI.get(True))  # YAML 1.1 reads a bare `on` key as true
    assert on["schedule"] and {"push", "pull_request"} <= set(on)
    build = step_with_id(CI, "image", "build")["with"]
    assert build["no-cache"] == expression("github.event_name == 'schedule'") and build["pull"] is True
    gates = [{key: step["with"][key] for key in ("severity", "ignore-unfixed", "exit-code", "scanners")}
             for step in steps(CI, "image") if uses(step, "aquasecurity/trivy-action@")]
    assert gates == [{"severity": "HIGH,CRITICAL", "ignore-unfixed": True, "exit-code": "1", "scanners": "vuln"}] * len(
        platforms(CI))


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.y*ml")), ids=lambda path: path.name)
def test_every_action_is_pinned_to_a_full_commit_sha(path):
    workflow = yaml.safe_load(path.read_text())
    actions = [step["uses"] for job in workflow["jobs"].values() for step in job.get("steps", []) if "uses" in step]
    actions += [job["uses"] for job in workflow["jobs"].values() if "uses" in job]  # reusable workflows
    assert [action for action in actions if not action.startswith("./") and
            not re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", action)] == []
