"""Timed image builds for the instruments' figures (make bench, make compare)."""

import subprocess
import time

from project import make_values

# The base images as make passes them (a mirror's, or .ci/'s stand-ins): passed on to every build.
BASE_ARGS = [arg for name, value in make_values().items() for arg in ("--build-arg", f"{name}={value}")]


def timed_build(context, dockerfile, tag, *extra, timeout=600):
    """`docker build` of the folder `context` with its `dockerfile`; returns the seconds it took and the image id."""
    start = time.monotonic()
    image_id = subprocess.run(
        ["docker", "build", "--quiet", "--file", str(context / dockerfile), "--tag", tag, *BASE_ARGS, *extra,
         str(context)], check=True, capture_output=True, text=True, timeout=timeout).stdout.strip()
    return time.monotonic() - start, image_id


def cold_and_rebuild(context, dockerfile, tag, timeout=600):
    """The two build times a developer meets: cold (--no-cache), then after a one-line change to app.py.

    `context` is a scratch copy, changed here; `tag` names the rebuild, and the cold image is removed."""
    cold, cold_id = timed_build(context, dockerfile, tag, "--no-cache", timeout=timeout)
    with open(context / "app.py", "a") as source:
        source.write(f"# rebuilt at {time.time()}\n")
    rebuild, rebuild_id = timed_build(context, dockerfile, tag, timeout=timeout)
    if cold_id != rebuild_id:
        subprocess.run(["docker", "image", "rm", cold_id], check=True, capture_output=True, timeout=60)
    return cold, rebuild
