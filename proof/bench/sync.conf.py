"""gunicorn settings for the bench's sync contender: the shipped gunicorn.conf.py's, on gunicorn's sync worker.
bench.py mounts this file into the slim image and passes it with --config: the image and its files are unchanged."""

import runpy

globals().update((name, value) for name, value in runpy.run_path("gunicorn.conf.py").items()
                 if not name.startswith("__"))
worker_class = "sync"
