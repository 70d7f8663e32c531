"""Compares the two image variants side by side: `make compare` prints one row per variant and writes
build/compare.md.

Usage: make compare   (PYTHONPATH=bench python bench/compare.py IMAGE_REPOSITORY)
Sizes and file checks are read from the images `make build` made; build times come from building them again here,
once cold (--no-cache) and once after a one-line change to app.py in a copy of the build context.
"""

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from project import BASE_VARIABLES, VARIANTS, base_image, base_variable
from project import dockerfile as variant_dockerfile

ROOT = Path(__file__).resolve().parent.parent
BASE_ARGS = [arg for name in BASE_VARIABLES if name in os.environ for arg in ("--build-arg", name)]
SHELLS = {"bin/sh", "usr/bin/sh", "bin/bash", "usr/bin/bash"}
PACKAGE_MANAGERS = {"usr/bin/apt", "usr/bin/apt-get", "usr/bin/dpkg", "usr/local/bin/pip", "venv/bin/pip"}


def docker(*args, capture=True):
    return subprocess.run(["docker", *args], check=True, capture_output=capture, text=capture).stdout


def inspect(image, template):
    return docker("image", "inspect", "--format", template, image).strip()


def exported_files(image):
    container = docker("create", image).strip()
    try:
        data = subprocess.run(["docker", "export", container], check=True, capture_output=True).stdout
    finally:
        docker("rm", container)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return {member.name.lstrip("./"): member for member in archive.getmembers()}


def timed_build(dockerfile, context, tag, *extra):
    start = time.monotonic()
    subprocess.run(["docker", "build", "--quiet", "--file", str(context / dockerfile), "--tag", tag, *BASE_ARGS,
                    *extra, str(context)], check=True, capture_output=True)
    return time.monotonic() - start


def build_times(dockerfile):
    with tempfile.TemporaryDirectory() as scratch:
        context = Path(scratch)
        for name in (".dockerignore", "Dockerfile", "Dockerfile.distroless", "app.py", "gunicorn.conf.py",
                     "requirements.txt"):
            shutil.copy(ROOT / name, context / name)
        tag = "notes-web-compare:scratch"
        cold = timed_build(dockerfile, context, tag, "--no-cache")
        with open(context / "app.py", "a") as app:
            app.write(f"# rebuilt at {time.time()}\n")
        rebuild = timed_build(dockerfile, context, tag)
        docker("rmi", tag)
        return cold, rebuild


def row(variant, repository):
    dockerfile, base = variant_dockerfile(variant), base_image(base_variable(variant))
    image = f"{repository}:{variant}"
    size = int(inspect(image, "{{.Size}}"))
    base_size = int(inspect(base, "{{.Size}}"))
    files = exported_files(image)
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


def table(rows):
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r[c] for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: python bench/compare.py IMAGE_REPOSITORY")
    rows = [row(variant, sys.argv[1]) for variant in VARIANTS]
    output = table(rows)
    print(output)
    (ROOT / "build").mkdir(exist_ok=True)
    (ROOT / "build" / "compare.md").write_text(output + "\n")


if __name__ == "__main__":
    main()
