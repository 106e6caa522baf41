# syntax=docker/dockerfile:1
# profile-consumer image: build wheels in one stage, install them into a clean slim Python.
#   docker build -t profile-consumer:0.1.0 .
#   docker run --rm -v "$PWD/my-config:/etc/profile-consumer:ro" -p 9400:9400 profile-consumer:0.1.0
# The final image holds no compiler, no build backend and no source tree: only the installed
# package (with its Avro schema inside) and its runtime dependencies.

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: resolve and build every wheel, then install them under /install ----------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# What the wheel is built from (pyproject names README.md as the package's readme).
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY consumer ./consumer

# confluent-kafka and fastavro ship manylinux wheels, so no compiler is needed; pip wheel builds
# the project's own wheel (hatchling, in an isolated build env) and collects every dependency.
RUN pip wheel --wheel-dir /wheels . \
 && pip install --prefix=/install --no-index --find-links=/wheels profile-consumer

# --- runtime --------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="profile-consumer" \
      org.opencontainers.image.description="Kafka offline-channel events to Adobe Target profile updates" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONFAULTHANDLER=1

# A fixed non-root identity (the Helm chart's securityContext runs as 10001:10001).
RUN groupadd --system --gid 10001 profile-consumer \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin profile-consumer

COPY --from=builder /install /usr/local

# Smoke test at build time: the console script runs and the default Avro schema is packaged.
RUN profile-consumer --help > /dev/null \
 && python -c "import importlib.resources as r; \
assert r.files('consumer').joinpath('_schemas', 'offline_transaction.avsc').is_file()"

# An empty working directory: relative paths in the config resolve next to the config file or
# to the schema packaged with the consumer, never to stray files here.
WORKDIR /app
USER 10001:10001

# /metrics, /healthz (liveness), /readyz (readiness).
EXPOSE 9400

# SIGTERM drains in-flight work (pipeline.shutdown_timeout_seconds), commits and exits 0.
ENTRYPOINT ["profile-consumer"]
CMD ["run", "--config", "/etc/profile-consumer/config.yaml"]
