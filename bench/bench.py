"""`make bench`: the module's naive image, the slim and distroless images and a bare-WSGI ceiling, measured side by
side on this machine in one run; prints the tables and writes docs/benchmarks.md.

Usage: python bench/bench.py
Each variant is built twice from a copy of its build context: cold (--no-cache), then after a one-line change to
app.py; the second build is the image measured, and both are removed at the end. Load comes from wrk (Debian's
package), on 127.0.0.1 only: CONNECTIONS connections for LOAD_SECONDS, in ROUNDS rounds across the variants.
Every step has a timeout taken from one DEADLINE, so the run ends by itself within ten minutes, whatever happens.
"""

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from harness import DATABASE_ENV, LABEL, POSTGRES_IMAGE, answers, free_port, migrate, postgres, wait_until
from testcontainers.core.container import DockerContainer
from testcontainers.core.network import Network

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = time.monotonic() + 600
CONNECTIONS = 64
LOAD_SECONDS = 10
ROUNDS = 2
STARTS = 5  # `docker run` -> ready is the median of this many starts
BASES = {"PYTHON_IMAGE": os.environ.get("PYTHON_IMAGE", "python:3.13-slim-trixie"),
         "DISTROLESS_IMAGE": os.environ.get("DISTROLESS_IMAGE", "gcr.io/distroless/python3-debian13:nonroot")}
BASE_ARGS = [arg for name in ("PYTHON_IMAGE", "BUILD_IMAGE", "DISTROLESS_IMAGE") if name in os.environ
             for arg in ("--build-arg", name)]


@dataclass(frozen=True)
class Variant:
    name: str
    what: str
    context: Path
    files: tuple
    dockerfile: str
    base: str  # the BASES entry it is built FROM
    ready: str  # the path whose first 200 counts as ready
    database: bool


SERVICE_FILES = (".dockerignore", "app.py", "gunicorn.conf.py", "requirements.txt")
VARIANTS = (
    Variant("naive", "the module's image: Flask dev server, root", ROOT / "bench" / "naive",
            ("Dockerfile", "app.py", "requirements.txt"), "Dockerfile", "PYTHON_IMAGE", "/", False),
    Variant("slim", "Dockerfile: gunicorn, non-root", ROOT, ("Dockerfile", *SERVICE_FILES), "Dockerfile",
            "PYTHON_IMAGE", "/readyz", True),
    Variant("distroless", "Dockerfile.distroless: no shell", ROOT, ("Dockerfile.distroless", *SERVICE_FILES),
            "Dockerfile.distroless", "DISTROLESS_IMAGE", "/readyz", True),
    Variant("ceiling", "bare WSGI callable on gunicorn", ROOT / "bench" / "ceiling",
            ("Dockerfile", "app.py", "requirements.txt"), "Dockerfile", "PYTHON_IMAGE", "/", False),
)


def remaining():
    left = DEADLINE - time.monotonic()
    if left <= 0:
        sys.exit("bench: stopped at its ten-minute bound")
    return left


def run(*command, timeout=None, **options):
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=timeout or remaining(),
                          **options).stdout


# ---------------------------------------------------------------------------------------------- measurements


def timed_build(context, dockerfile, tag, *extra):
    start = time.monotonic()
    image_id = run("docker", "build", "--quiet", "--file", str(context / dockerfile), "--tag", tag, *BASE_ARGS,
                   *extra, str(context)).strip()
    return time.monotonic() - start, image_id


def build(variant, scratch):
    """Cold build, then a rebuild after a one-line app.py change; returns both times and the image measured."""
    context = scratch / variant.name
    context.mkdir()
    for name in variant.files:
        shutil.copy(variant.context / name, context / name)
    tag = f"notes-bench:{variant.name}"
    cold, cold_id = timed_build(context, variant.dockerfile, tag, "--no-cache")
    with open(context / "app.py", "a") as app:
        app.write(f"# rebuilt at {time.time()}\n")
    rebuild, _ = timed_build(context, variant.dockerfile, tag)
    run("docker", "image", "rm", cold_id)  # untagged by the rebuild
    return cold, rebuild, tag


def size(image):
    return int(run("docker", "image", "inspect", "--format", "{{.Size}}", image))


def memory_in_use(container):
    """As `docker stats` counts it: the cgroup's usage less the page cache the kernel can drop at once."""
    memory = container.get_wrapped_container().stats(stream=False)["memory_stats"]
    stats = memory["stats"]
    return memory["usage"] - stats.get("total_inactive_file", stats.get("inactive_file", 0))


def start_timed(variant, image, network):
    """`docker run` (create and start) until the ready path answers 200: returns the seconds and the container."""
    container = DockerContainer(image).with_network(network).with_kwargs(labels=LABEL)
    if variant.database:
        for name, value in DATABASE_ENV.items():
            container.with_env(name, value)
    container.ports["8000/tcp"] = ("127.0.0.1", free_port())
    start = time.monotonic()
    container.start()
    try:
        wait_until(answers(url(container) + variant.ready), min(60, remaining()), f"{image} ready")
    except BaseException:
        container.stop()
        raise
    return time.monotonic() - start, container


def url(container):
    return f"http://127.0.0.1:{container.ports['8000/tcp'][1]}"


def prepare(variant, network, scratch, cleanup):
    """Builds the variant and starts it STARTS times; the last container stays up, idle, for the load rounds."""
    print(f"bench: {variant.name}: building, then starting {STARTS} times", file=sys.stderr)
    cold, rebuild, image = build(variant, scratch)
    cleanup.callback(run, "docker", "image", "rm", image, timeout=60)
    if variant.database:
        migrate(image, network)  # a no-op once the schema is there
    starts = []
    for attempt in range(STARTS):
        seconds, container = start_timed(variant, image, network)
        starts.append(seconds)
        if attempt < STARTS - 1:
            container.stop()
    cleanup.callback(container.stop)
    return {"variant": variant, "container": container, "size": size(image), "base": size(BASES[variant.base]),
            "cold": cold, "rebuild": rebuild, "ready": statistics.median(starts), "idle": memory_in_use(container)}


def load(address, mix):
    """wrk at CONNECTIONS connections for LOAD_SECONDS: GET address, or with `mix` the POST-then-GET notes mix."""
    output = run("wrk", "--threads", "2", "--connections", str(CONNECTIONS), "--duration", f"{LOAD_SECONDS}s",
                 "--timeout", "5s", "--script", str(ROOT / "bench" / "wrk.lua"), address,
                 env={**os.environ, "NOTES_MIX": "1" if mix else ""})
    figures = json.loads(output.strip().splitlines()[-1])
    figures["rps"] = figures["requests"] / figures["seconds"]
    return figures


def load_rounds(results):
    """ROUNDS rounds, each loading every variant in turn; a variant keeps its best round (highest rate).

    Interleaved, so that a burst of other work on the machine costs one round of one variant, not its figure.
    """
    for round_number in range(ROUNDS):
        for result in results:
            print(f"bench: {result['variant'].name}: load, round {round_number + 1} of {ROUNDS}", file=sys.stderr)
            loads = {"hello": load(url(result["container"]) + "/", mix=False)}
            if result["variant"].database:
                loads["notes"] = load(url(result["container"]), mix=True)
            for name, figures in loads.items():
                if figures["rps"] > result.get(name, {"rps": -1})["rps"]:
                    result[name] = figures


# ---------------------------------------------------------------------------------------------- report


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def load_cells(figures):
    if not figures:
        return ["—"] * 4
    return [f"{figures['rps']:.0f}", f"{figures['p50_ms']:.1f}", f"{figures['p99_ms']:.1f}", str(figures["errors"])]


def ratio(value, reference, digits=2):
    return f"{value / reference:.{digits}f}×" if reference else "—"


def tables(results):
    naive, ceiling = results[0], results[-1]
    images = table(
        ["variant", "what", "size MB", "over base MB", "cold build s", "rebuild s", "run → ready s", "idle memory MiB"],
        [[r["variant"].name, r["variant"].what, f"{r['size'] / 1e6:.1f}", f"{(r['size'] - r['base']) / 1e6:.1f}",
          f"{r['cold']:.1f}", f"{r['rebuild']:.1f}", f"{r['ready']:.2f} ({r['variant'].ready})",
          f"{r['idle'] / 2**20:.1f}"] for r in results])
    loads = table(
        ["variant", "GET / req/s", "p50 ms", "p99 ms", "errors", "notes mix req/s", "p50 ms", "p99 ms", "errors"],
        [[r["variant"].name, *load_cells(r["hello"]), *load_cells(r.get("notes"))] for r in results])
    ratios = table(
        ["variant", "size", "over base", "rebuild", "run → ready", "idle memory", "GET / req/s", "GET / p99",
         "GET / req/s of ceiling"],
        [[r["variant"].name, ratio(r["size"], naive["size"]),
          ratio(r["size"] - r["base"], naive["size"] - naive["base"]), ratio(r["rebuild"], naive["rebuild"]),
          ratio(r["ready"], naive["ready"]), ratio(r["idle"], naive["idle"]),
          ratio(r["hello"]["rps"], naive["hello"]["rps"]), ratio(r["hello"]["p99_ms"], naive["hello"]["p99_ms"]),
          f"{100 * r['hello']['rps'] / ceiling['hello']['rps']:.0f} %"] for r in results])
    return images, loads, ratios


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    memory = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    engine = run("docker", "version", "--format", "{{.Server.Version}}").strip()
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split()[1]
    return (f"{cpu}, {os.cpu_count()} cores, {memory / 2**30:.1f} GiB, Linux {platform.release()}, "
            f"Docker Engine {engine}, wrk {wrk}")


def revision():
    commit = run("git", "rev-parse", "--short", "HEAD", cwd=ROOT).strip()
    dirty = run("git", "status", "--porcelain", cwd=ROOT).strip()
    return commit + (" with uncommitted changes" if dirty else "")


def report(results, started, load_before):
    images, loads, ratios = tables(results)
    bases = ", ".join(f"{name}={value}" for name, value in {**BASES, "POSTGRES_IMAGE": POSTGRES_IMAGE}.items())
    return f"""# Benchmarks

Written by `make bench` ([bench/bench.py](../bench/bench.py)) in one run; run it again rather than editing this file.
Figures from one machine: compare rows with each other, not with another machine's.

- Date: {started:%Y-%m-%d %H:%M} UTC
- Revision: {revision()}
- Machine: {machine()}
- Load average (1 min) as the run began: {load_before:.2f}; above {os.cpu_count()}, other work shared the cores
- Base images: {bases}

## Image, build and start

{images}

## Under load: {CONNECTIONS} connections for {LOAD_SECONDS} s, best of {ROUNDS} rounds

{loads}

## Ratios: against the naive image (×), and the share of the ceiling's GET / rate

{ratios}

## How each figure is taken

- **naive** is the module's hello-flask ([bench/naive](../bench/naive)): `python app.py`, Flask's development
  server, as root. **ceiling** ([bench/ceiling](../bench/ceiling)) is gunicorn with the same two sync workers
  serving a WSGI callable that only returns its greeting: no service on this machine with those workers answers
  GET / faster. Neither has a database, so neither has a notes mix.
- **Size** is the image's size as `docker image ls` reports it; **over base** subtracts its base image
  (PYTHON_IMAGE, or DISTROLESS_IMAGE for distroless).
- **Cold build** is `docker build --no-cache` with the base image already local; **rebuild** is the next build
  after one comment line is appended to app.py. Dependency downloads count in both.
- **Run → ready** is the median of {STARTS} runs, from `docker run` (create and start) to the first 200 from
  /readyz, which answers only once the database does; naive and ceiling have no /readyz, so their first 200 from
  / counts. slim and distroless reach a PostgreSQL ({POSTGRES_IMAGE}) on the same Docker network.
- **Idle memory** is the web container's memory in use right after it is ready, counted as `docker stats` does.
- **Under load**: wrk with [bench/wrk.lua](../bench/wrk.lua), 2 threads, on 127.0.0.1 against the published
  port, on the same cores as the containers. GET / is the greeting; the **notes mix** alternates POST /api/notes
  and a GET of the note just created. p50 and p99 are wrk's latency percentiles; errors are socket errors,
  timeouts (5 s) and any status other than 2xx or 3xx. The {ROUNDS} rounds take the variants in turn, and each
  variant keeps its round with the higher rate: other work on the machine then costs one round, not a figure.
  The four containers stay up, idle but for the one under load, with no CPU or memory limit.
"""


def main():
    if shutil.which("wrk") is None:
        sys.exit("bench: wrk is not installed; install Debian's package: apt-get install wrk")
    started, before = datetime.now(UTC), os.getloadavg()[0]
    with ExitStack() as cleanup:
        scratch = Path(cleanup.enter_context(tempfile.TemporaryDirectory()))
        network = cleanup.enter_context(Network())
        cleanup.enter_context(postgres(network))
        results = [prepare(variant, network, scratch, cleanup) for variant in VARIANTS]
        load_rounds(results)
    document = report(results, started, before)
    print("\n\n".join(tables(results)))
    (ROOT / "docs" / "benchmarks.md").write_text(document)
    print(f"\nwritten to docs/benchmarks.md in {(datetime.now(UTC) - started).total_seconds():.0f} s")


if __name__ == "__main__":
    main()
