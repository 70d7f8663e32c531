"""The ceiling: a WSGI app that does nothing but answer, so that gunicorn and this machine are all a benchmark of it
measures. The notes service cannot serve GET / faster than this on the same machine with the same workers."""

BODY = b"Hello, World!"


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))])
    return [BODY]
