# minitalk-trio in a container: `docker build -t minitalk-trio .` from the repository root (deploy/README.md).
#
# Two stages: the builder makes a wheel of this project and installs it, with its runtime dependencies only (no
# dev or bench extras: the README's `pip install .`), into a virtualenv at /opt/venv; the runtime stage is a
# fresh python:3.11-slim with that virtualenv copied in, no pip cache, no build tools, no source tree.
# Every runtime dependency ships manylinux wheels for CPython 3.11 (amd64, arm64), so no compiler is needed.

FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY protocol ./protocol
COPY storage ./storage
COPY bench ./bench
RUN python -m venv /opt/venv \
 && pip wheel --no-deps -w /wheels . \
 && /opt/venv/bin/pip install /wheels/*.whl

FROM python:3.11-slim
# A fixed uid/gid, so a volume's owner and a pod's runAsUser/fsGroup can name it.
RUN groupadd --system --gid 10001 minitalk \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home --shell /usr/sbin/nologin minitalk \
 && mkdir /data && chown 10001:10001 /data
COPY --from=builder /opt/venv /opt/venv
# The default SQLite file (README: sqlite:///data/minitalk.db, relative) made absolute, on the volume.
# METRICS_PORT: /metrics on its own port, scraped from inside; the chat port answers it 404.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=4000 \
    METRICS_PORT=9464 \
    DATABASE_URL=sqlite:////data/minitalk.db
VOLUME ["/data"]
WORKDIR /data
USER 10001:10001
EXPOSE 4000 9464
# Liveness: /health answers 200 while the process serves. No curl in slim: Python's urllib, which exits 1 on a
# refused connection, a timeout or any status >= 400.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '4000') + '/health', timeout=4)"]
# SIGTERM: commit, ack and close every session within --shutdown-timeout (10 s), then exit 0. Docker's default
# stop timeout is 10 s: use `docker stop -t 15` (or `stop_grace_period: 15s` in compose).
STOPSIGNAL SIGTERM
# --host has no environment variable (README: HOST is set by shells); inside a container loopback is useless.
# Arguments after the image name (`docker run minitalk-trio --log-level debug`) are appended.
ENTRYPOINT ["python", "-m", "server", "--host", "0.0.0.0"]
