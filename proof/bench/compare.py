"""Compares the two image variants side by side: `make compare` prints one row per variant and writes
build/compare.md.

Usage: make compare   (PYTHONPATH=.:tests python -m proof.bench.compare IMAGE_REPOSITORY)
Sizes and file checks are read from the images `make build` made; build times come from building them again here,
once cold (--no-cache) and once after a one-line change to app.py in a copy of the build context.
"""

import shutil
import subprocess
import sys
import tempfile
from contextlib import closing
from pathlib import Path

import docker as docker_py
from containers import exported_files
from project import IMAGE, VARIANTS, base_image, base_variable
from project import dockerfile as variant_dockerfile

from proof.builds import cold_and_rebuild
from proof.report import markdown_table

ROOT = Path(__file__).resolve().parents[2]
SHELLS = {"bin/sh", "usr/bin/sh", "bin/bash", "usr/bin/bash"}
PACKAGE_MANAGERS = {"usr/bin/apt", "usr/bin/apt-get", "usr/bin/dpkg", "usr/local/bin/pip", "venv/bin/pip"}


def docker_client():
    return closing(docker_py.from_env())


def docker(*args, capture=True):
    return subprocess.run(["docker", *args], check=True, capture_output=capture, text=capture).stdout


def inspect(image, template):
    return docker("image", "inspect", "--format", template, image).strip()


def build_times(dockerfile):
    with tempfile.TemporaryDirectory() as scratch:
        context = Path(scratch)
        for name in (".dockerignore", dockerfile, "app.py", "gunicorn.conf.py", "serving.py", "requirements.txt"):
            shutil.copy(ROOT / name, context / name)
        tag = f"{IMAGE}-compare:scratch"
        times = cold_and_rebuild(context, dockerfile, tag)
        docker("rmi", tag)
        return times


def row(client, variant, repository):
    dockerfile, base = variant_dockerfile(variant), base_image(base_variable(variant))
    image = f"{repository}:{variant}"
    size = int(inspect(image, "{{.Size}}"))
    base_size = int(inspect(base, "{{.Size}}"))
    files = exported_files(client, image)
    setuid = sum(1 for m in files.values() if m.isfile() and m.mode & 0o6000)
    cold, rebuild = build_times(dockerfile)
    return {
        "variant": variant,
        "size MB": f"{size / 1e6:.1f}",
        "over base MB": f"{(size - base_size) / 1e6:.1f}",
        "layers": str(len(inspect(image, "{{json .RootFS.Layers}}").split(","))),
        "user": inspect(image, "{{.Config.User}}") or "root",
        "shell": "yes" if SHELLS & files.keys() else "no",
        "package manager": "yes" if PACKAGE_MANAGERS & files.keys() else "no",
        "setuid files": str(setuid),
        "cold build s": f"{cold:.1f}",
        "rebuild s": f"{rebuild:.1f}",
    }


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: python -m proof.bench.compare IMAGE_REPOSITORY")
    with docker_client() as client:
        rows = [row(client, variant, sys.argv[1]) for variant in VARIANTS]
    output = markdown_table(list(rows[0]), [list(row.values()) for row in rows])
    print(output)
    (ROOT / "build").mkdir(exist_ok=True)
    (ROOT / "build" / "compare.md").write_text(output + "\n")


if __name__ == "__main__":
    main()
