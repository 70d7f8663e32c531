"""gunicorn settings for the bench's "slim, no metrics" contender: the shipped gunicorn.conf.py's, and once each
worker has loaded the app, its count_request hook unregistered, so that it counts no request for /metrics and the
difference to slim is what counting costs. bench.py mounts this file into the slim image and passes it with --config.
"""

import runpy

globals().update((name, value) for name, value in runpy.run_path("gunicorn.conf.py").items()
                 if not name.startswith("__"))
shipped_post_worker_init = globals().get("post_worker_init")


def post_worker_init(worker):
    if shipped_post_worker_init:
        shipped_post_worker_init(worker)
    hooks = worker.wsgi.after_request_funcs[None]
    counting = [hook for hook in hooks if hook.__name__ == "count_request"]
    if len(counting) != 1:
        raise SystemExit("bench: the app no longer has one count_request after-request hook to leave out")
    hooks.remove(counting[0])
