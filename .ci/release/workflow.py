"""ci.yml's image and publish jobs, read so that `make release-local` runs what they run rather than a copy of it.

  workflow.py run STEP                 the `run:` script of the step named STEP
  workflow.py env NAME                 the workflow's env value NAME
  workflow.py build-args VARIANT K=V   docker buildx build's arguments for the build step's inputs, for VARIANT's
                                       matrix row; K=V give the values GitHub would (github.sha=..., env.ARCHIVE=...)

A hand-written reader: no library turns docker/build-push-action's inputs into buildx's flags outside GitHub.
"""

import re
import sys
from pathlib import Path

import yaml

WORKFLOW = Path(__file__).resolve().parents[2] / ".github" / "workflows" / "ci.yml"
BUILD_STEP = "Build once, for every platform, with an SBOM and provenance each"
# GitHub's layer cache and the nightly's no-cache have no counterpart here: the local builder keeps its own cache.
IGNORED = {"cache-from", "cache-to", "no-cache"}
# build-push-action's inputs, as buildx flags (docker/build-push-action, src/context.ts).
FLAGS = {"file": "--file", "platforms": "--platform", "outputs": "--output", "sbom": "--sbom",
         "provenance": "--provenance", "pull": "--pull", "build-args": "--build-arg"}


def workflow():
    return yaml.safe_load(WORKFLOW.read_text())


def step(name):
    found = [(job, step) for job in workflow()["jobs"].values() for step in job.get("steps", [])
             if step.get("name") == name]
    if len(found) != 1:
        sys.exit(f"error: {len(found)} steps of {WORKFLOW.name} are named {name!r}, not 1")
    return found[0]


def build_args(variant, given):
    job, build = step(BUILD_STEP)
    rows = [row for row in job["strategy"]["matrix"].get("include", []) if row.get("variant") == variant]
    if not rows:
        sys.exit(f"error: the image job's matrix has no variant {variant!r}")
    values = {f"matrix.{key}": str(value) for key, value in rows[0].items()}
    values |= {f"env.{key}": str(value) for key, value in workflow().get("env", {}).items()}
    values |= given

    def resolve(text):
        if isinstance(text, bool):  # YAML's true, as GitHub passes it: a string
            text = str(text).lower()

        def one(match):
            if match[1] not in values:
                sys.exit(f"error: {WORKFLOW.name}'s build step needs ${{{{ {match[1]} }}}}: give {match[1]}=VALUE")
            return values[match[1]]
        return re.sub(r"\$\{\{\s*([\w.-]+)\s*\}\}", one, str(text))

    # The job's own env may name matrix values (ARCHIVE: <variant>.oci.tar); a value given wins.
    for key, value in job.get("env", {}).items():
        values.setdefault(f"env.{key}", resolve(value))
    arguments = []
    for key, value in build["with"].items():
        if key in IGNORED or key == "context":
            continue
        if key not in FLAGS:
            sys.exit(f"error: the build step's input {key!r} has no buildx flag here: add it to {Path(__file__).name}")
        if key == "build-args":
            for line in resolve(value).splitlines():
                if line.strip():
                    arguments += [FLAGS[key], line.strip()]
        elif key == "pull":
            if resolve(value) == "true":
                arguments.append(FLAGS[key])
        else:
            arguments.append(f"{FLAGS[key]}={resolve(value)}")
    return arguments + [resolve(build["with"].get("context", "."))]


def main():
    if sys.argv[1:2] == ["run"] and len(sys.argv) == 3:
        print(step(sys.argv[2])[1]["run"], end="")
    elif sys.argv[1:2] == ["env"] and len(sys.argv) == 3:
        print(workflow()["env"][sys.argv[2]])
    elif sys.argv[1:2] == ["build-args"] and len(sys.argv) >= 3:
        given = dict(argument.split("=", 1) for argument in sys.argv[3:])
        print("\n".join(build_args(sys.argv[2], given)))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
