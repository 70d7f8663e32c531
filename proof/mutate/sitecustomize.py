"""Coverage in every Python process of make mutate's baseline run: pytest itself, and the gunicorn and
`flask --app app migrate` subprocesses its tests start. Python imports this module at start-up because mutate.py
puts this folder on PYTHONPATH; it does nothing unless MUTATE_COVERAGE names the run's coverage folder."""

import os

if os.environ.get("MUTATE_COVERAGE"):
    import atexit
    from pathlib import Path

    import coverage

    _folder = Path(os.environ["MUTATE_COVERAGE"])
    _running = _folder / "running"
    # A subprocess counts for every test of the module that started it: a module-scoped server outlives the test
    # that started it and answers the module's other tests. pytest itself switches context per test (pytest_mutate).
    _coverage = coverage.Coverage(
        data_file=str(_folder / "data"), data_suffix=True, include=os.environ["MUTATE_INCLUDE"].split(","),
        context=f"module:{_running.read_text()}" if _running.exists() else None,
        # gunicorn's gevent workers answer in greenlets; coverage follows them only when told.
        concurrency=["gevent", "thread"], config_file=False)
    # Tests read what the app writes to stderr line by line: coverage must add nothing to it.
    _coverage.set_option("run:disable_warnings", ["no-data-collected", "module-not-measured", "module-not-imported",
                                                  "already-imported", "include-ignored", "no-ctracer"])
    _coverage.start()

    def _save():
        _coverage.stop()
        _coverage.save()

    # Also in a forked gunicorn worker, which leaves through sys.exit: coverage then writes a file of its own.
    atexit.register(_save)
