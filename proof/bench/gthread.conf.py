"""gunicorn settings for the bench's gthread contender: the shipped gunicorn.conf.py's, on gunicorn's gthread worker
with BENCH_THREADS threads. bench.py mounts this file into the slim image and passes it with --config."""

import os
import runpy

globals().update((name, value) for name, value in runpy.run_path("gunicorn.conf.py").items()
                 if not name.startswith("__"))
worker_class = "gthread"
threads = int(os.environ["BENCH_THREADS"])
