# syntax=docker/dockerfile:1
# streamproc container image.
#
#   docker build -t streamproc:0.1.0 .
#   docker run --rm streamproc:0.1.0 --help
#   docker run --rm -e STREAMPROC_BOOTSTRAP_SERVERS=kafka:9092 streamproc:0.1.0 consume
#
# Two stages: `build` makes a wheel and installs it with its dependencies into a virtualenv
# (confluent-kafka and fastavro ship manylinux wheels, so nothing is compiled); the final stage
# copies only that virtualenv onto the same slim Python base, adds tini and a non-root user.
# No compiler, pip cache or source tree reaches the final image.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/streamproc
COPY pyproject.toml README.md ./
COPY avro ./avro
COPY streamproc ./streamproc
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/streamproc/bin/pip install --no-compile /wheels/*.whl \
 && /opt/streamproc/bin/python -m compileall -q /opt/streamproc/lib \
 && /opt/streamproc/bin/streamproc --version

FROM ${PYTHON_IMAGE} AS runtime
# tini is PID 1: it forwards SIGTERM to streamproc (which then finishes its batch, flushes dead
# letters, commits and exits 0) and reaps zombies. Python as PID 1 would ignore signals it has no
# handler for, and nothing would reap orphans.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*
# Numeric user and group so Kubernetes' runAsNonRoot can verify them without /etc/passwd.
ARG UID=10001
ARG GID=10001
RUN groupadd --gid "${GID}" streamproc \
 && useradd --uid "${UID}" --gid "${GID}" --no-create-home --home-dir /data --shell /usr/sbin/nologin streamproc \
 && mkdir -p /data \
 && chown "${UID}:${GID}" /data
COPY --from=build /opt/streamproc /opt/streamproc
ENV PATH=/opt/streamproc/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STREAMPROC_SINK=sqlite:/data/streamproc.sqlite
# The default SQLite sink writes here; with a read-only root filesystem mount a volume on /data.
WORKDIR /data
VOLUME ["/data"]
USER 10001:10001
# /metrics, /healthz, /readyz of `streamproc consume`.
EXPOSE 9464
ENTRYPOINT ["/usr/bin/tini", "--", "streamproc"]
CMD ["consume"]
