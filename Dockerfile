# The slim image: one stage on the official Python base, running as a non-root user.
# Base image choice: slim is Debian without docs or compilers; the name is a variable so a mirror can serve it.
ARG PYTHON_IMAGE=python:3.13-slim-trixie
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /app

# Bytecode at build time: on a read-only root nothing can cache it, so each start would compile the stdlib again.
RUN python -m compileall -q -j 0 -x '/(test|tests|idlelib|tkinter|turtledemo|ensurepip)/' \
      "$(python -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')"

# Layer caching: the dependency manifest comes before the source, so a code edit reuses the installed packages.
COPY requirements.txt .
# Then, in the same layer (a later one would only hide files this one still ships): the test suites and C sources
# that gevent, greenlet and zope.interface install beside their code, and gevent's libuv loop, which nothing here
# runs; and every setuid or setgid program, deleted (a chmod would copy each one into this layer).
RUN pip install --no-cache-dir --require-hashes -r requirements.txt \
 && site="$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
 && find "$site" -depth \( -type d \( -name tests -o -path '*/gevent/testing' -o -path '*/gevent/libuv' \) \
      -exec rm -rf {} + \) \
      -o \( -type f \( -name '*.[ch]' -o -name '*.[ch]pp' -o -name '*.pyx' -o -name '*.pxd' \) -delete \) \
 && find / -xdev -type f -perm /6000 -delete

# Files copied as root stay read-only to the runtime user: a compromised process cannot rewrite the app.
COPY app.py gunicorn.conf.py serving.py ./
RUN python -m compileall -q app.py serving.py

# Non-root: a numeric uid (the distroless nonroot one) that Kubernetes' runAsNonRoot can verify without /etc/passwd.
USER 65532:65532
# 8000 serves the app; 9000 /metrics, for Prometheus only (gunicorn.conf.py).
EXPOSE 8000 9000
# Exec form, no shell and no curl: Python itself asks the liveness endpoint.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=2)"]
# Exec form: the server (serving.py runs gunicorn in its own process) is PID 1 and receives docker stop's SIGTERM.
CMD ["python", "-m", "serving"]

# Last, so that a new revision or date does not invalidate the layers above.
ARG PYTHON_IMAGE
ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=unknown
ARG LICENSES=NOASSERTION
# What app_build_info reports at /metrics.
ENV APP_VERSION=${VERSION} APP_REVISION=${REVISION} APP_VARIANT=slim
LABEL org.opencontainers.image.title="notes-web" \
      org.opencontainers.image.description="Flask + PostgreSQL notes service (slim, non-root)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="${LICENSES}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
