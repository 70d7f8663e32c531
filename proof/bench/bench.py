"""`make bench`: the module's naive image, the service on each of gunicorn's worker models, the distroless image, a
bare-WSGI ceiling and a database ceiling, measured side by side on this machine in one run; prints the tables and
writes docs/benchmarks.md.

Usage: make bench   (PYTHONPATH=.:tests python -m proof.bench.bench: it imports app.py and tests/' modules)
Each shipped variant is built twice from a copy of its build context: cold (--no-cache), then after a one-line change
to app.py; the second build is the image measured, and both are removed at the end. The worker-model variants run
the slim image as it is, with a gunicorn config file of their own from this folder mounted and passed to it.
Load comes from wrk (Debian's package), on 127.0.0.1 only:
CONNECTIONS connections for LOAD_SECONDS, in ROUNDS rounds across the variants, each phase started only once the
previous one's TIME_WAIT sockets are gone. Every step has a timeout taken from one DEADLINE, so the run ends by
itself within twenty-five minutes, whatever happens.
"""

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml
from containers import DATABASE_ENV, DB_PASSWORD, LABEL, migrate, postgres
from project import POSTGRES_IMAGE, ROOT, base_image
from testcontainers.core.container import DockerContainer
from testcontainers.core.network import Network
from waits import answers, free_port, wait_for_time_wait, wait_until

import app
from proof.builds import cold_and_rebuild
from proof.report import machine, markdown_table, revision

HERE = Path(__file__).resolve().parent
WEB_NANO_CPUS = int(float(yaml.safe_load((ROOT / "compose.yaml").read_text())
                          ["services"]["web"]["deploy"]["resources"]["limits"]["cpus"]) * 1e9)
DEADLINE = time.monotonic() + 1500
CONNECTIONS = 64
LOAD_SECONDS = 10
ROUNDS = 2
STARTS = 5  # `docker run` -> ready is the median of this many starts
BASES = {name: base_image(name) for name in ("PYTHON_IMAGE", "DISTROLESS_IMAGE")}


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
    # For a setting's variant: the slim image itself, run with these variables set,
    environment: dict = field(default_factory=dict)
    # and with this gunicorn config file of this folder mounted and passed to gunicorn instead of the shipped one.
    config: str | None = None
    # Run by gunicorn itself rather than `python -m serving`: a worker model other than the service's gevent one.
    plain_gunicorn: bool = False

    @property
    def reuses_slim(self):
        """A setting's variant: it runs the slim image as it is, with no image of its own."""
        return bool(self.environment or self.config)


SERVICE_FILES = (".dockerignore", "app.py", "gunicorn.conf.py", "serving.py", "requirements.txt")
THREADS = 4  # gthread's threads per worker: as many as the pool's connections (app.py's default), so none waits
# sync and gthread with two workers, as the service ran before gevent: one worker per core would leave a core idle
# whenever its worker waits on the database.
BLOCKING_WORKERS = {"WEB_CONCURRENCY": "2"}
# Where a variant's config file is mounted in its container.
CONFIG_DIR = "/bench"
VARIANTS = (
    Variant("naive", "the module's image: Flask dev server, root", HERE / "naive",
            ("Dockerfile", "app.py", "requirements.txt"), "Dockerfile", "PYTHON_IMAGE", "/", False),
    Variant("sync", "slim on gunicorn's sync worker", ROOT, ("Dockerfile", *SERVICE_FILES), "Dockerfile",
            "PYTHON_IMAGE", "/readyz", True, BLOCKING_WORKERS, "sync.conf.py", plain_gunicorn=True),
    Variant(f"gthread ×{THREADS}", f"slim on gthread, {THREADS} threads a worker", ROOT,
            ("Dockerfile", *SERVICE_FILES), "Dockerfile", "PYTHON_IMAGE", "/readyz", True,
            {**BLOCKING_WORKERS, "BENCH_WORKER_CLASS": "gthread", "BENCH_THREADS": str(THREADS)}, "sync.conf.py",
            plain_gunicorn=True),
    Variant("slim", "Dockerfile: gunicorn gevent, non-root", ROOT, ("Dockerfile", *SERVICE_FILES), "Dockerfile",
            "PYTHON_IMAGE", "/readyz", True),
    Variant("slim, no metrics", "slim without counting requests for /metrics", ROOT,
            ("Dockerfile", *SERVICE_FILES), "Dockerfile", "PYTHON_IMAGE", "/readyz", True,
            config="no_metrics.conf.py"),
    Variant("slim, 2 workers", "slim with WEB_CONCURRENCY=2", ROOT, ("Dockerfile", *SERVICE_FILES), "Dockerfile",
            "PYTHON_IMAGE", "/readyz", True, environment={"WEB_CONCURRENCY": "2"}),
    Variant("slim, pool 8", "slim with DATABASE_POOL_MAX_SIZE=8", ROOT, ("Dockerfile", *SERVICE_FILES),
            "Dockerfile", "PYTHON_IMAGE", "/readyz", True, environment={"DATABASE_POOL_MAX_SIZE": "8"}),
    Variant("distroless", "Dockerfile.distroless: no shell", ROOT, ("Dockerfile.distroless", *SERVICE_FILES),
            "Dockerfile.distroless", "DISTROLESS_IMAGE", "/readyz", True),
    Variant("ceiling", "bare WSGI callable on gunicorn", HERE / "ceiling",
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


def build(variant, scratch):
    """Cold build, then a rebuild after a one-line app.py change; returns both times and the image measured.

    A setting's variant runs the slim image as it is: no image and no times of its own."""
    if variant.reuses_slim:
        return None, None, "notes-bench:slim"
    tag = "notes-bench:" + re.sub(r"[^a-z0-9]+", "-", variant.name).strip("-")
    context = scratch / tag.split(":")[1]
    context.mkdir()
    for file in variant.files:
        shutil.copy(variant.context / file, context / file)
    cold, rebuild = cold_and_rebuild(context, variant.dockerfile, tag, timeout=remaining())
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
    # Every contender gets web's CPU limit in compose.yaml, so each figure is what a deployment of it sees.
    container = DockerContainer(image).with_network(network).with_kwargs(labels=LABEL, nano_cpus=WEB_NANO_CPUS)
    if variant.database:
        for name, value in DATABASE_ENV.items():
            container.with_env(name, value)
    for name, value in variant.environment.items():
        container.with_env(name, value)
    if variant.config:
        container.with_volume_mapping(str(HERE / variant.config), f"{CONFIG_DIR}/{variant.config}", "ro")
        container.with_command(with_config(variant, image))
    container.ports["8000/tcp"] = ("127.0.0.1", free_port())
    start = time.monotonic()
    container.start()
    try:
        wait_until(answers(url(container) + variant.ready), min(60, remaining()), f"{image} ready")
    except BaseException:
        container.stop()
        raise
    return time.monotonic() - start, container


def with_config(variant, image):
    """The image's own command, with gunicorn's --config pointing at the variant's file (the images run
    `python -m serving`, which passes its options on to gunicorn, the last --config winning); a plain_gunicorn
    variant runs gunicorn itself, so that serving.py is never imported."""
    config = f"{CONFIG_DIR}/{variant.config}"
    if variant.plain_gunicorn:
        return ["python", "-m", "gunicorn", "--config", config, "app:create_app()"]
    command = json.loads(run("docker", "image", "inspect", "--format", "{{json .Config.Cmd}}", image))
    return [*command, "--config", config]


def url(container):
    return f"http://127.0.0.1:{container.ports['8000/tcp'][1]}"


def prepare(variant, network, scratch, cleanup):
    """Builds the variant and starts it STARTS times; the last container stays up, idle, for the load rounds."""
    print(f"bench: {variant.name}: building, then starting {STARTS} times", file=sys.stderr)
    cold, rebuild, image = build(variant, scratch)
    if not variant.reuses_slim:  # else the image is slim's, removed with it
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
            "cold": cold, "rebuild": rebuild, "ready": statistics.median(starts), "idle": memory_in_use(container),
            "workers": gunicorn_workers(container)}


def gunicorn_workers(container):
    """How many workers gunicorn runs in `container` (its processes but the master), or None without gunicorn."""
    processes = container.get_wrapped_container().top()["Processes"]
    count = sum(any(name in process[-1] for name in ("gunicorn", "serving")) for process in processes)
    return count - 1 if count else None


def load(address, mix):
    """wrk at CONNECTIONS connections for LOAD_SECONDS: GET address, or with `mix` the POST-then-GET notes mix."""
    wait_for_time_wait(timeout=min(70, remaining()))
    output = run("wrk", "--threads", "2", "--connections", str(CONNECTIONS), "--duration", f"{LOAD_SECONDS}s",
                 "--timeout", "5s", "--script", str(HERE / "wrk.lua"), address,
                 env={**os.environ, "NOTES_MIX": "1" if mix else ""})
    figures = json.loads(output.strip().splitlines()[-1])
    figures["rps"] = figures["requests"] / figures["seconds"]
    return figures


def database_ceiling(db, clients):
    """pgbench in the database container, running the notes mix's own two statements (app.py's INSERT_NOTE, then
    SELECT_NOTE of the row it returned) through `clients` connections for LOAD_SECONDS: the most the database
    serves on this machine, as requests per second (each transaction is one POST's and one GET's statement)."""
    script = (app.INSERT_NOTE.replace("%s", "'pgbench note'") + " \\gset\n" + app.SELECT_NOTE.replace("%s", ":id")
              + ";\n")
    command = ('printf %s "$SCRIPT" > /tmp/notes-mix.sql && exec pgbench --no-vacuum --protocol=prepared'
               f' --host=127.0.0.1 --username=notes --client={clients} --jobs=2 --time={LOAD_SECONDS}'
               ' --file=/tmp/notes-mix.sql notes')
    wait_for_time_wait(timeout=min(70, remaining()))
    status, output = db.get_wrapped_container().exec_run(
        ["sh", "-c", command], environment={"SCRIPT": script, "PGPASSWORD": DB_PASSWORD})
    output = output.decode()
    if status != 0:
        sys.exit(f"bench: pgbench exited {status}: {output}")
    figure = {line.split(" = ")[0]: float(line.split(" = ")[1].split()[0]) for line in output.splitlines()
              if line.startswith(("tps = ", "latency average = "))}
    return {"rps": 2 * figure["tps"], "latency_ms": figure["latency average"], "clients": clients}


def load_rounds(results, db):
    """ROUNDS rounds, each loading every variant in turn and then the database; each keeps its best round.

    Interleaved, so that a burst of other work on the machine costs one round of one variant, not its figure.
    """
    clients = by_name(results, "slim")["workers"] * app.load_config({}).pool_max_size
    database = {"rps": -1}
    for round_number in range(ROUNDS):
        print(f"bench: database ceiling (pgbench): round {round_number + 1} of {ROUNDS}", file=sys.stderr)
        figures = database_ceiling(db, clients)
        if figures["rps"] > database["rps"]:
            database = figures
        for result in results:
            print(f"bench: {result['variant'].name}: load, round {round_number + 1} of {ROUNDS}", file=sys.stderr)
            loads = {"hello": load(url(result["container"]) + "/", mix=False)}
            if result["variant"].database:
                loads["notes"] = load(url(result["container"]), mix=True)
            for name, figures in loads.items():
                if figures["rps"] > result.get(name, {"rps": -1})["rps"]:
                    result[name] = figures
    return database


# ---------------------------------------------------------------------------------------------- report


def load_cells(figures):
    if not figures:
        return ["—"] * 4
    return [f"{figures['rps']:.0f}", f"{figures['p50_ms']:.1f}", f"{figures['p99_ms']:.1f}", str(figures["errors"])]


def ratio(value, reference, digits=2):
    return f"{value / reference:.{digits}f}×" if reference else "—"


def seconds(value):
    return "—" if value is None else f"{value:.1f}"


def share(figures, ceiling):
    return f"{100 * figures['rps'] / ceiling:.0f} %" if figures else "—"


def by_name(results, name):
    return next(r for r in results if r["variant"].name == name)


def tables(results, database):
    naive, ceiling, sync = results[0], by_name(results, "ceiling"), by_name(results, "sync")
    images = markdown_table(
        ["variant", "what", "size MB", "over base MB", "cold build s", "rebuild s", "run → ready s",
         "idle memory MiB", "workers"],
        [[r["variant"].name, r["variant"].what, f"{r['size'] / 1e6:.1f}", f"{(r['size'] - r['base']) / 1e6:.1f}",
          seconds(r["cold"]), seconds(r["rebuild"]), f"{r['ready']:.2f} ({r['variant'].ready})",
          f"{r['idle'] / 2**20:.1f}", str(r["workers"] or "—")] for r in results])
    loads = markdown_table(
        ["variant", "GET / req/s", "p50 ms", "p99 ms", "errors", "notes mix req/s", "p50 ms", "p99 ms", "errors"],
        [[r["variant"].name, *load_cells(r["hello"]), *load_cells(r.get("notes"))] for r in results]
        + [["database (pgbench)", *["—"] * 4, f"{database['rps']:.0f}",
            f"{database['latency_ms']:.1f} (mean)", "—", "0"]])
    shares = markdown_table(
        ["variant", "GET / of the bare-WSGI ceiling", "notes mix of the database ceiling", "notes mix × sync"],
        [[r["variant"].name, share(r["hello"], ceiling["hello"]["rps"]), share(r.get("notes"), database["rps"]),
          ratio(r["notes"]["rps"], sync["notes"]["rps"]) if "notes" in r else "—"] for r in results])
    ratios = markdown_table(
        ["variant", "size", "over base", "run → ready", "idle memory", "GET / req/s", "GET / p99"],
        [[r["variant"].name, ratio(r["size"], naive["size"]),
          ratio(r["size"] - r["base"], naive["size"] - naive["base"]), ratio(r["ready"], naive["ready"]),
          ratio(r["idle"], naive["idle"]), ratio(r["hello"]["rps"], naive["hello"]["rps"]),
          ratio(r["hello"]["p99_ms"], naive["hello"]["p99_ms"])] for r in results])
    return images, loads, shares, ratios


def metrics_cost(results):
    """GET / with and without counting each request for /metrics, from the same run."""
    counted, uncounted = by_name(results, "slim")["hello"], by_name(results, "slim, no metrics")["hello"]
    cost = 100 * (1 - counted["rps"] / uncounted["rps"])
    return (f"GET /: {counted['rps']:.0f} req/s with metrics, {uncounted['rps']:.0f} without: counting each request "
            f"costs {cost:.1f} % of the throughput (goal: at most 5 %); p99 {counted['p99_ms']:.1f} ms against "
            f"{uncounted['p99_ms']:.1f} ms.")


def report(results, database, started, load_before):
    images, loads, shares, ratios = tables(results, database)
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split()[1]
    bases = ", ".join(f"{name}={value}" for name, value in {**BASES, "POSTGRES_IMAGE": POSTGRES_IMAGE}.items())
    return f"""# Benchmarks

Written by `make bench` ([proof/bench/bench.py](../proof/bench/bench.py)) in one run; run it again rather than
editing this file.
Figures from one machine: compare rows with each other, not with another machine's.

- Date: {started:%Y-%m-%d %H:%M} UTC
- Revision: {revision()}
- Machine: {machine()}, wrk {wrk}
- Load average (1 min) as the run began: {load_before:.2f}; above {os.cpu_count()}, other work shared the cores
- Base images: {bases}

## Image, build and start

{images}

## Under load: {CONNECTIONS} connections for {LOAD_SECONDS} s, best of {ROUNDS} rounds

{loads}

## Shares of the two ceilings, and against the sync worker

{shares}

## What the metrics cost

{metrics_cost(results)}

## Ratios against the naive image

{ratios}

## How each figure is taken

- Every contender runs with web's CPU limit in compose.yaml ({WEB_NANO_CPUS / 1e9:g} CPU), as a deployment runs it:
  each figure, and each ratio to the ceiling, is what one container of it serves.
- **naive** is the module's hello-flask ([proof/bench/naive](../proof/bench/naive)): `python app.py`, Flask's
  development server, as root. **ceiling** ([proof/bench/ceiling](../proof/bench/ceiling)) is gunicorn with the
  service's gevent worker serving a WSGI callable that only returns its greeting: no service on this machine
  with those workers answers GET / faster. Neither has a database, so neither has a notes mix.
- **sync** and **gthread ×{THREADS}** are the slim image as it is, run by gunicorn itself with a config file of their
  own ([sync.conf.py](../proof/bench/sync.conf.py), the worker class from the environment): the service's settings
  with another worker class, two workers, and without serving.py, whose gevent patches would make them gevent
  processes: the worker models the service did not choose, on the same code and pool. They run the slim image, so
  they have no build times. **slim, no metrics** is the slim image with
  [no_metrics.conf.py](../proof/bench/no_metrics.conf.py), which unregisters the app's `count_request` hook in each
  worker: it then counts no request for /metrics, and the difference to slim is what counting costs.
  **slim, 2 workers** and
  **slim, pool 8** are the slim image run with one setting changed: the worker count and the pool size, measured
  beside the defaults they would replace.
- **database (pgbench)** is the ceiling for the notes mix: pgbench, in the database container, running the mix's own
  statements (app.py's `INSERT_NOTE`, then `SELECT_NOTE` of the row it returned, as prepared statements) through
  {database['clients']} connections, as many as the service's pools hold in total (workers × DATABASE_POOL_MAX_SIZE),
  for {LOAD_SECONDS} s. Each transaction counts as two requests; pgbench reports a mean latency, not percentiles.
- **Size** is the image's size as `docker image ls` reports it; **over base** subtracts its base image
  (PYTHON_IMAGE, or DISTROLESS_IMAGE for distroless).
- **Cold build** is `docker build --no-cache` with the base image already local; **rebuild** is the next build
  after one comment line is appended to app.py. Dependency downloads count in both.
- **Run → ready** is the median of {STARTS} runs, from `docker run` (create and start) to the first 200 from
  /readyz, which answers only once the database does; naive and ceiling have no /readyz, so their first 200 from
  / counts. slim and distroless reach a PostgreSQL ({POSTGRES_IMAGE}) on the same Docker network.
- **Idle memory** is the web container's memory in use right after it is ready, counted as `docker stats` does.
- **Under load**: wrk with [proof/bench/wrk.lua](../proof/bench/wrk.lua), 2 threads, on 127.0.0.1 against the
  published port, on the same cores as the containers. GET / is the greeting; the **notes mix** alternates
  POST /api/notes and a GET of the note just created. p50 and p99 are wrk's latency percentiles; errors are socket
  errors, timeouts (5 s) and any status other than 2xx or 3xx. The {ROUNDS} rounds take the variants in turn, and each
  variant keeps its round with the higher rate: other work on the machine then costs one round, not a figure.
  Each phase starts only once fewer than 1,000 sockets are in TIME_WAIT: the sync worker and the development server
  close a connection per request, and a phase started among those sockets measures a fraction of its rate.
  The containers stay up, idle but for the one under load, with no CPU or memory limit.
"""


def main():
    if shutil.which("wrk") is None:
        sys.exit("bench: wrk is not installed; install Debian's package: apt-get install wrk")
    started, before = datetime.now(UTC), os.getloadavg()[0]
    with ExitStack() as cleanup:
        scratch = Path(cleanup.enter_context(tempfile.TemporaryDirectory()))
        network = cleanup.enter_context(Network())
        db = cleanup.enter_context(postgres(network))
        # The setting's variants after slim, whose image they run; the tables keep VARIANTS' order.
        results = sorted((prepare(variant, network, scratch, cleanup)
                          for variant in sorted(VARIANTS, key=lambda variant: variant.reuses_slim)),
                         key=lambda result: VARIANTS.index(result["variant"]))
        database = load_rounds(results, db)
    document = report(results, database, started, before)
    print("\n\n".join(tables(results, database)))
    (ROOT / "docs" / "benchmarks.md").write_text(document)
    print(f"\nwritten to docs/benchmarks.md in {(datetime.now(UTC) - started).total_seconds():.0f} s")


if __name__ == "__main__":
    main()
