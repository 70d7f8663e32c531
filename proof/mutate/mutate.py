"""make mutate: mutation testing of the serving code with cosmic-ray, written to docs/mutation.md.

1. Copies the repository into build/mutate/ (pristine/ and one copy per worker): cosmic-ray writes each mutant into
   the file on disk, so the gunicorn and `flask --app app migrate` subprocesses the tests start import it too, and
   the working tree is never touched.
2. Runs the tests once without a mutant under coverage, every process included (sitecustomize.py, pytest_mutate.py),
   and maps each line of the mutated files to the tests that ran its function (plan.json). A line that runs at
   import time (a constant, a decorator, a class's base) maps to every test that runs the file.
3. cosmic-ray init, then exec on its http distributor, one http-worker per copy; each mutant runs only its lines'
   tests (run_tests.py).
4. Writes docs/mutation.md: the score, and every survivor with the judgement a person wrote for it in
   judgements.toml, keyed by file, function, line and mutant (not by a job number, which changes with the code).
   Exits non-zero when the score is under the goal, a survivor has no judgement, or a mutant could not be run.

After judging the survivors, `make mutate-report` rewrites the report from the same run; an interrupted run goes on
where it stopped with `mutate.py --resume` (same arguments as make mutate's). After tests were added for the gaps,
`make mutate-survivors` tests the survivors again, and only them, against the tests as they are now (a new
baseline maps the new tests): a mutant the old tests killed stays killed, since tests were only added; the mutated
files must be as they were.
"""

import argparse
import ast
import io
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import tokenize
import tomllib
from collections import Counter
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from cosmic_ray.work_db import WorkDB, use_db
from waits import free_port, wait_until

from proof.report import machine, markdown_table, revision

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
STAGE = ROOT / "build" / "mutate"
JUDGEMENTS = HERE / "judgements.toml"
GOAL = 95.0  # per cent of the mutants that change behaviour, killed (issue 27)
# Each mutant's tests get run_tests.py's own time bound; this one only catches a worker that is stuck.
COSMIC_RAY_TIMEOUT = 3600


def copy_repository(destination):
    """The files git tracks or would track, copied to `destination`, and the base-image stand-ins' settings."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout.split("\0")
    for name in [*listed, ".ci/airgap.mk"]:
        if name and (ROOT / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)
    return destination


def pytest(arguments, cwd, **environment):
    env = {**os.environ, "PYTHONPATH": str(HERE), **environment}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "pytest_mutate", "-p", "no:cacheprovider",
                           *arguments], cwd=cwd, env=env).returncode


# ------------------------------------------------------------------------------------------------ the baseline


def enclosing_functions(tree, count):
    """{line: the lines of the innermost function whose body holds it}; the lines not in it run at import time.

    A whole function, not the line's statement: in gunicorn's gevent workers coverage loses some lines after a
    greenlet switch (a database call), so a test that ran any line of the function is a test for all of them."""
    functions = [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    enclosing = {}
    for line in range(1, count + 1):
        holders = [node for node in functions if node.body[0].lineno <= line <= node.end_lineno]
        if holders:
            innermost = min(holders, key=lambda node: node.end_lineno - node.lineno)
            # Its body only: the def line and its decorators run at import time, under whichever test imported.
            enclosing[line] = range(innermost.body[0].lineno, innermost.end_lineno + 1)
    return enclosing


def baseline(files, tests, pristine):
    """Runs the tests once under coverage; returns plan.json's content: each test's module, path and time, and for
    each line of each file the tests to run when it is mutated."""
    folder = STAGE / "coverage"
    folder.mkdir()
    status = pytest(tests, pristine, MUTATE_COVERAGE=str(folder),
                    MUTATE_INCLUDE=",".join(str(pristine / name) for name in files))
    if status != 0:
        sys.exit(f"error: the tests fail without any mutant (pytest exited {status}): make them pass first")
    import coverage

    combined = coverage.Coverage(data_file=str(folder / "data"), config_file=False)
    combined.combine(data_paths=[str(folder)])
    data = combined.get_data()
    ran = json.loads((folder / "tests.json").read_text())
    for test in ran.values():
        test["path"] = str(Path(test["path"]).relative_to(pristine))
    by_module = {}
    for test, facts in ran.items():
        by_module.setdefault(facts["module"], set()).add(test)

    def tests_of(context):
        if context.startswith("module:"):  # a fixture or a subprocess: pytest_mutate.py, sitecustomize.py
            return by_module.get(context.removeprefix("module:"), set(ran))
        return {context} if context in ran else set(ran)  # "": at collection, outside any test

    lines, functions = {}, {}
    for name in files:
        source = (pristine / name).read_text()
        contexts = data.contexts_by_lineno(str(pristine / name))
        run_by = {line: set().union(*(tests_of(context) for context in found)) for line, found in contexts.items()}
        touching = set().union(*run_by.values())
        enclosing = enclosing_functions(ast.parse(source), len(source.splitlines()))
        # A function no test was seen running gets every test that runs the file: coverage cannot see a thread
        # started with _thread (LogQueue's writer) or a worker's last moments, and an untested mutant would count
        # as a survivor.
        lines[name] = {str(line): sorted((set().union(*(run_by.get(other, set()) for other in enclosing[line]))
                                          if line in enclosing else set()) or touching)
                       for line in range(1, len(source.splitlines()) + 1)}
        functions[name] = {str(line): function for line, function in qualified_names(source).items()}
    return {"tests": ran, "lines": lines, "functions": functions}


# ------------------------------------------------------------------------------------------------ cosmic-ray


def cosmic_ray(*arguments, **options):
    return subprocess.run([str(Path(sys.executable).parent / "cosmic-ray"), *arguments], check=True, **options)


def execute(files, workers, pristine, resume):
    """cosmic-ray init (unless resuming: exec runs only the mutants not yet tested) and exec, with one http-worker in
    its own copy of the repository per core."""
    ports = [free_port() for _ in range(workers)]
    config = STAGE / "cosmic-ray.toml"
    config.write_text("\n".join([
        "[cosmic-ray]",
        f"module-path = {json.dumps(files)}",
        f"timeout = {COSMIC_RAY_TIMEOUT}",
        "excluded-modules = []",
        f'test-command = "{sys.executable} {HERE / "run_tests.py"} {STAGE}"',
        "[cosmic-ray.distributor]",
        'name = "http"',
        "[cosmic-ray.distributor.http]",
        f"worker-urls = {json.dumps([f'http://127.0.0.1:{port}' for port in ports])}",
    ]) + "\n")
    session = STAGE / "session.sqlite"
    if not resume:
        cosmic_ray("init", str(config), str(session), cwd=pristine)
    else:  # the mutants under test when the run was interrupted: their workers were stopped, not the mutants run
        with sqlite3.connect(session) as db:
            db.execute("DELETE FROM work_results WHERE worker_outcome = 'ABNORMAL'")
    environment = {**os.environ, "PYTHONPATH": str(HERE)}
    processes = []
    try:
        for number, port in enumerate(ports, 1):
            copy = copy_repository(STAGE / f"worker-{number}")
            log = (STAGE / f"worker-{number}.log").open("w")
            processes.append(subprocess.Popen([str(Path(sys.executable).parent / "cosmic-ray"), "http-worker",
                                               "--port", str(port)], cwd=copy, env=environment, stdout=log,
                                              stderr=subprocess.STDOUT))
            wait_until(lambda port=port: listening(port), timeout=30, what=f"cosmic-ray http-worker on {port}")
        done = threading.Event()
        threading.Thread(target=report_progress, args=(session, done), daemon=True).start()
        try:
            cosmic_ray("exec", str(config), str(session), cwd=pristine)
        finally:
            done.set()
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=60)


def listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return False
    return True


def report_progress(session, done):
    with sqlite3.connect(session) as db:
        total = db.execute("SELECT count(*) FROM work_items").fetchone()[0]
        while not done.wait(60):
            finished = db.execute("SELECT count(*) FROM work_results").fetchone()[0]
            print(f"mutate: {finished} of {total} mutants run", flush=True)


# ------------------------------------------------------------------------------------------------ the report


def qualified_names(source):
    """{line: the dotted name of the innermost function or class around it, its decorators included}."""
    names = {}

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                first = min([child.lineno, *(decorator.lineno for decorator in child.decorator_list)])
                names.update(dict.fromkeys(range(first, child.end_lineno + 1), prefix + child.name))
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return names


def without_comment(line):
    """The line without its comment, so that rewording a comment keeps its judgements."""
    tokens = []
    try:
        tokens.extend(tokenize.generate_tokens(io.StringIO(line).readline))
    except (tokenize.TokenError, IndentationError):  # a line of a statement that spans several: its tokens so far
        pass
    comment = next((token for token in tokens if token.type == tokenize.COMMENT), None)
    return (line[:comment.start[1]] if comment else line).strip()


def key(mutation, result, names):
    """What a person reads and judges: the file, the function, the line as written and the line as mutated."""
    diff = (result.diff or "").splitlines()
    removed = [without_comment(line[1:]) for line in diff if line.startswith("-") and not line.startswith("---")]
    added = [without_comment(line[1:]) for line in diff if line.startswith("+") and not line.startswith("+++")]
    return (str(mutation.module_path), names.get(mutation.start_pos[0], "(module)"), " / ".join(removed),
            " / ".join(added) or "(line removed)")


def load_judgements():
    entries = tomllib.loads(JUDGEMENTS.read_text()).get("survivor", [])
    return {(entry["file"], entry["function"], entry["line"], entry["mutant"]): entry for entry in entries}


def code(text):
    return "`" + text.replace("|", "\\|") + "`" if text else ""


def report(session, files, tests, run, plan, output):
    with use_db(str(session), WorkDB.Mode.open) as db:
        done = sorted(db.completed_work_items, key=lambda pair: (str(pair[0].mutations[0].module_path),
                                                                 pair[0].mutations[0].start_pos))
        total_items = db.num_work_items
    judgements = load_judgements()
    names = {name: qualified_names((STAGE / "pristine" / name).read_text()) for name in files}
    seen = Counter()
    survivors, errors, counts = [], [], Counter()
    for item, result in done:
        mutation = item.mutations[0]
        if result.worker_outcome == "no-test":  # cosmic-ray found nothing to mutate there
            continue
        if result.worker_outcome != "normal" or result.test_outcome == "incompetent":
            errors.append((mutation, result))
            continue
        name = str(mutation.module_path)
        counts[name, "mutants"] += 1
        if result.test_outcome == "killed":
            counts[name, "killed"] += 1
            counts["hung"] += (result.output or "").startswith(("timeout", "the tests ran over"))
            continue
        found = key(mutation, result, names[name])
        seen[found] += 1
        if seen[found] > 1:  # the same change twice on one line: told apart by order
            found = (*found[:3], f"{found[3]} ({seen[found]})")
        judgement = judgements.get(found, {})
        verdict = judgement.get("verdict", "unexplained")
        counts[name, verdict] += 1
        line = mutation.start_pos[0]
        survivors.append((found, line, mutation.operator_name, verdict, judgement.get("why", ""),
                          len(plan["lines"][name].get(str(line), []))))
    stale = sorted(set(judgements) - {survivor[0] for survivor in survivors})
    write_unexplained([survivor for survivor in survivors if survivor[3] == "unexplained"])

    rows, total = [], Counter()
    for name in files:
        for what in ("mutants", "killed", "equivalent", "gap", "unexplained"):
            total[what] += counts[name, what]
        rows.append([name, *(str(counts[name, what]) for what in ("mutants", "killed", "equivalent", "gap",
                                                                   "unexplained")), percent(counts, name)])
    score = 100.0 * total["killed"] / max(1, total["mutants"] - total["equivalent"])
    if len(files) > 1:
        rows.append(["all", *(str(total[what]) for what in ("mutants", "killed", "equivalent", "gap",
                                                            "unexplained")), f"{score:.1f} %"])
    failures = []
    if score < GOAL:
        failures.append(f"the score, {score:.1f} %, is under the goal of {GOAL:.0f} %")
    if total["unexplained"]:
        failures.append(f"{total['unexplained']} survivors have no judgement in proof/mutate/judgements.toml")
    if errors:
        failures.append(f"{len(errors)} mutants could not be run (see the end of this file)")
    if total_items > len(done):
        failures.append(f"the run stopped before {total_items - len(done)} of {total_items} mutants were tested: "
                        "the figures above count only those tested")

    lines = [
        "# Mutation testing",
        "",
        "Written by `make mutate` ([proof/mutate/mutate.py](../proof/mutate/mutate.py)) in one run; run it again "
        "rather than editing this file.",
        "A mutant is a copy of the code with one small change (a flipped comparison, a changed constant, a dropped "
        "decorator); the tests kill it when one of them fails. A survivor is either equivalent (no client or "
        "operator could tell it from the code) or a gap the tests leave; a person judges each one, in "
        "[proof/mutate/judgements.toml](../proof/mutate/judgements.toml).",
        "",
        f"- Date: {run['date']}",
        f"- Revision: {run['revision']}",
        f"- Tool: cosmic-ray {version('cosmic-ray')}, every core operator; coverage {version('coverage')} chose "
        "each mutant's tests: those that ran its function (a line run at import time: every test that runs the "
        "file)",
        f"- Mutated: {', '.join(files)}",
        f"- Tests: {' '.join(tests)}, {len(plan['tests'])} of them, leaving out those marked "
        "slow, cluster or nested and those that build the images",
        *([f"- Survivors tested again: {run['survivors']['count']}, on {run['survivors']['date']} at revision "
           f"{run['survivors']['revision']}, against the tests then (tests were only added: what the first pass "
           "killed stays killed)"] if "survivors" in run else []),
        f"- Run time: {run['seconds'] / 60:.0f} min on {run['machine']}, load average (1 min) {run['load']} as the "
        "run began: above 2, other work shared the cores",
        "",
        "## Score",
        "",
        f"**{score:.1f} %** of the mutants that change behaviour killed (killed / (mutants − equivalent); "
        f"goal {GOAL:.0f} %). Of the killed, {counts['hung']} made the tests run over "
        "three times their usual time (run_tests.py).",
        "",
        markdown_table(["file", "mutants", "killed", "equivalent", "gap", "unexplained", "score"], rows),
        "",
        "## Survivors",
        "",
    ]
    if survivors:
        lines.append(markdown_table(
            ["file", "function", "line", "as written", "mutant", "operator", "tests run", "verdict", "why"],
            [[found[0], found[1], str(line), code(found[2]), code(found[3]), operator.removeprefix("core/"),
              str(ran), verdict, why] for found, line, operator, verdict, why, ran in survivors]))
    else:
        lines.append("None.")
    if stale:
        lines += ["", "## Judgements no survivor matches", "",
                  "Killed now, or the line changed: delete them from judgements.toml.", ""]
        lines += [f"- {found[0]} {found[1]}: {code(found[2])} → {code(found[3])}" for found in stale]
    if errors:
        lines += ["", "## Mutants that could not be run", ""]
        lines += [f"- {mutation.module_path}:{mutation.start_pos[0]} {mutation.operator_name}: "
                  f"{result.worker_outcome}, {(result.output or '').strip().splitlines()[-1:]}"
                  for mutation, result in errors]
    if failures:
        lines += ["", "## Not yet done", ""] + [f"- {failure}" for failure in failures]
    output.write_text("\n".join(lines) + "\n")
    return failures


def write_unexplained(survivors):
    """build/mutate/unexplained.toml: an entry for each survivor without a judgement, to judge and copy into
    judgements.toml."""
    entries = []
    for (name, function, line, mutant), number, operator, _, _, ran in survivors:
        entries += ["[[survivor]]", *(f"{field} = {json.dumps(value, ensure_ascii=False)}" for field, value in
                                      [("file", name), ("function", function), ("line", line), ("mutant", mutant)]),
                    f'verdict = ""  # line {number}, {operator}, {ran} tests ran it: "equivalent" or "gap"',
                    'why = ""', ""]
    (STAGE / "unexplained.toml").write_text("\n".join(entries))
    if entries:
        print(f"mutate: {len(survivors)} survivors to judge: {(STAGE / 'unexplained.toml').relative_to(ROOT)}")


def percent(counts, name):
    changing = counts[name, "mutants"] - counts[name, "equivalent"]
    return f"{100.0 * counts[name, 'killed'] / changing:.1f} %" if changing else "—"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", nargs="+", required=True, help="the files to mutate, relative to the repository")
    parser.add_argument("--tests", nargs="+", required=True, help="the test files or folders to run")
    parser.add_argument("--workers", type=int, default=2, help="mutants tested at once, one per core")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "mutation.md")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the last run's session")
    parser.add_argument("--resume", action="store_true", help="test the mutants an interrupted run left untested")
    parser.add_argument("--survivors", action="store_true",
                        help="test the last run's survivors again, against the tests as they are now")
    arguments = parser.parse_args()

    start = time.monotonic()
    if arguments.survivors:
        run = json.loads((STAGE / "run.json").read_text())
        changed = [name for name in arguments.files
                   if (ROOT / name).read_bytes() != (STAGE / "pristine" / name).read_bytes()]
        if changed:
            sys.exit(f"error: {', '.join(changed)} changed since the last run: run make mutate again")
        with sqlite3.connect(STAGE / "session.sqlite") as db:
            retested = db.execute("DELETE FROM work_results WHERE test_outcome = 'SURVIVED'").rowcount
        run["survivors"] = {"date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "revision": revision(),
                            "count": retested}
        shutil.rmtree(STAGE / "pristine")
        shutil.rmtree(STAGE / "coverage")
        copy_repository(STAGE / "pristine")
        plan = baseline(arguments.files, arguments.tests, STAGE / "pristine")
        (STAGE / "plan.json").write_text(json.dumps(plan))
        print(f"mutate: baseline done in {time.monotonic() - start:.0f} s, {len(plan['tests'])} tests; "
              f"{retested} survivors to test again", flush=True)
    elif arguments.report_only or arguments.resume:
        plan = json.loads((STAGE / "plan.json").read_text())
        run = json.loads((STAGE / "run.json").read_text())
    else:
        # What the report says of the run, taken as it begins: the judgements may be committed after it.
        run = {"date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "revision": revision(), "machine": machine(),
               "load": f"{os.getloadavg()[0]:.2f}", "seconds": 0}
        shutil.rmtree(STAGE, ignore_errors=True)
        STAGE.mkdir(parents=True)
        copy_repository(STAGE / "pristine")
        plan = baseline(arguments.files, arguments.tests, STAGE / "pristine")
        (STAGE / "plan.json").write_text(json.dumps(plan))
        print(f"mutate: baseline done in {time.monotonic() - start:.0f} s, {len(plan['tests'])} tests", flush=True)
    if not arguments.report_only:
        try:
            execute(arguments.files, arguments.workers, STAGE / "pristine", arguments.resume or arguments.survivors)
        finally:
            run["seconds"] += time.monotonic() - start
            (STAGE / "run.json").write_text(json.dumps(run))
    failures = report(STAGE / "session.sqlite", arguments.files, arguments.tests, run, plan, arguments.output)
    print(f"mutate: wrote {arguments.output} in {(time.monotonic() - start) / 60:.0f} min")
    if failures:
        sys.exit("mutate: " + "; ".join(failures))


if __name__ == "__main__":
    main()
