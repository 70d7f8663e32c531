"""The pytest plugin of make mutate (-p pytest_mutate). It leaves out the tests that build images or run drills;
for a mutant (run_tests.py) it keeps only the tests chosen for it (MUTATE_SELECT), puts first the ones that killed
mutants of the same function before (MUTATE_FIRST) and notes which test fails (MUTATE_FAILED); in the baseline run
(MUTATE_COVERAGE) it records which test runs which line, and how long each test takes."""

import json
import os
import time
from pathlib import Path

import pytest

# Minutes each, and they test the images, Compose or a cluster, not the code under mutation.
LEFT_OUT_MARKERS = ("slow", "cluster", "nested")
LEFT_OUT_FIXTURES = ("images",)

_folder = Path(os.environ["MUTATE_COVERAGE"]) if os.environ.get("MUTATE_COVERAGE") else None
_durations = {}


def lines_of(variable):
    return Path(os.environ[variable]).read_text().splitlines() if os.environ.get(variable) else None


def pytest_collection_modifyitems(config, items):
    selected = lines_of("MUTATE_SELECT")
    selected = None if selected is None else set(selected)
    kept, dropped = [], []
    for item in items:
        left_out = any(item.get_closest_marker(marker) for marker in LEFT_OUT_MARKERS) or any(
            fixture in item.fixturenames for fixture in LEFT_OUT_FIXTURES
        )
        (dropped if left_out or (selected is not None and item.nodeid not in selected) else kept).append(item)
    # With -x, a test that killed this function's mutants before most often kills the next one too, in seconds.
    first = {test: rank for rank, test in enumerate(lines_of("MUTATE_FIRST") or [])}
    kept.sort(key=lambda item: first.get(item.nodeid, len(first)))
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = kept


def pytest_runtest_logreport(report):
    if report.failed and os.environ.get("MUTATE_FAILED"):
        with open(os.environ["MUTATE_FAILED"], "a") as failed:
            failed.write(report.nodeid + "\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if _folder is None:
        yield
        return
    (_folder / "running").write_text(item.path.name)
    start = time.monotonic()
    yield
    _durations[item.nodeid] = {"module": item.path.name, "path": str(item.path), "seconds": time.monotonic() - start}
    switch_context("")


# What a fixture runs counts for every test of the module: a module- or session-scoped fixture is set up in the first
# test that needs it and serves the others; what the test itself runs counts for that test alone.
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    switch_context(f"module:{item.path.name}")
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    switch_context(item.nodeid)
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    switch_context(f"module:{item.path.name}")
    yield


def switch_context(context):
    if _folder is not None:
        import coverage

        coverage.Coverage.current().switch_context(context)


def pytest_sessionfinish(session, exitstatus):
    if _folder is not None:
        (_folder / "tests.json").write_text(json.dumps(_durations, indent=1))
