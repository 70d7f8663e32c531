"""cosmic-ray's test command in make mutate. cosmic-ray runs it in a worker's copy of the repository with one mutant
written into a file under test. It runs only the tests that ran the mutated lines' functions in the baseline run
(plan.json, from mutate.py), those that killed mutants of the same functions first, stops at the first failure, and
exits non-zero when a test fails: the mutant is killed."""

import difflib
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

# A mutant can turn a bounded wait into an endless one: tests that run this far over their baseline time are stopped,
# and the mutant counts as killed.
SLOWDOWN = 3
GRACE_SECONDS = 60


def changed_lines(before, after):
    """The lines of `before` that differ in `after` (a deleted line counts as changed)."""
    matcher = difflib.SequenceMatcher(None, before, after, autojunk=False)
    return {line + 1 for tag, start, end, _, _ in matcher.get_opcodes() if tag != "equal"
            for line in range(start, max(end, start + 1))}


def main(stage):
    plan = json.loads((stage / "plan.json").read_text())
    tests, functions = set(), set()
    for name, tests_by_line in plan["lines"].items():
        before = (stage / "pristine" / name).read_text().splitlines()
        for line in changed_lines(before, Path(name).read_text().splitlines()):
            tests.update(tests_by_line.get(str(line), []))
            functions.add(f"{name} {plan['functions'][name].get(str(line), '(module)')}")
    if not tests:
        print("no test runs the mutated lines")
        return 0
    killers = stage / "killers"  # one line per mutant killed: the function mutated, the test that failed
    previous = Counter()
    for line in killers.read_text().splitlines() if killers.exists() else []:
        name, function, test = line.split(" ", 2)
        if f"{name} {function}" in functions:
            previous[test] += 1
    Path(".mutate-selection").write_text("\n".join(sorted(tests)))
    Path(".mutate-first").write_text("\n".join(test for test, _ in previous.most_common() if test in tests))
    failed = Path(".mutate-failed")
    failed.write_text("")
    budget = GRACE_SECONDS + SLOWDOWN * sum(plan["tests"][test]["seconds"] for test in tests)
    paths = sorted({plan["tests"][test]["path"] for test in tests})
    process = subprocess.Popen([sys.executable, "-m", "pytest", "-x", "-q", "-p", "pytest_mutate",
                                "-p", "no:cacheprovider", *paths],
                               env={**os.environ, **{variable: str(Path(name).resolve()) for variable, name in [
                                   ("MUTATE_SELECT", ".mutate-selection"), ("MUTATE_FIRST", ".mutate-first"),
                                   ("MUTATE_FAILED", ".mutate-failed")]}})
    try:
        status = process.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        print(f"the tests ran over {budget:.0f} s, {SLOWDOWN} times their baseline time: the mutant hangs them")
        # SIGINT, as Ctrl-C: pytest unwinds its fixtures, which stop their containers.
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        return 1
    with killers.open("a") as record:
        record.writelines(f"{function} {test}\n" for function in functions for test in failed.read_text().split())
    return status


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
