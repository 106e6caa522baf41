# syntax=docker/dockerfile:1
# profile-consumer image: install the locked runtime dependencies and the project's own wheel in
# a builder stage, then copy them into a clean slim Python without pip.
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg CREATED="$(git log -1 --format=%cI)" -t profile-consumer:0.1.0 .
#   docker run --rm -v "$PWD/my-config:/etc/profile-consumer:ro" -p 9400:9400 profile-consumer:0.1.0
# Rebuilding the same commit gives the same software: the base image is pinned by digest, every
# dependency (runtime and build backend) by version and sha256 (`make lock` writes the locks),
# and pip refuses anything unhashed (`--require-hashes`) or built from source (`--only-binary`).

# The base image, pinned by digest: a tag moves, a digest does not. The digest below was taken
# from public references and could NOT be verified from the machine this file was written on (no
# registry access there): verify it before the first build, and on every bump, with
#   docker buildx imagetools inspect python:3.11-slim-bookworm
# (the "Digest:" line, the multi-platform index) and replace it here; docs/deploy.md has the steps.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

# --- builder: locked dependencies and the project wheel, installed under /install -----------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY requirements.lock requirements-build.lock ./
# Runtime dependencies exactly as locked; wheels only, so no compiler and no sdist build step
# can make two builds differ.
RUN pip install --require-hashes --only-binary=:all: --no-deps --prefix=/install \
      -r requirements.lock \
 && pip install --require-hashes --only-binary=:all: --no-deps -r requirements-build.lock

# What the wheel is built from (pyproject names README.md as the package's readme).
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY consumer ./consumer
# The build backend (hatchling) comes from requirements-build.lock, not from an isolated env
# that would resolve whatever is newest; --no-deps: the dependencies are the locked ones above.
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && pip install --no-deps --no-index --prefix=/install /wheels/profile_consumer-*.whl

# --- runtime --------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z

LABEL org.opencontainers.image.title="profile-consumer" \
      org.opencontainers.image.description="Kafka offline-channel events to Adobe Target profile updates" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/acme/profile-consumer" \
      org.opencontainers.image.url="https://github.com/acme/profile-consumer" \
      org.opencontainers.image.documentation="https://github.com/acme/profile-consumer/blob/main/docs/deploy.md" \
      org.opencontainers.image.vendor="acme" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONFAULTHANDLER=1

# No installer in the running image: nothing can add or upgrade packages at run time, and the
# scanners have three fewer packages to report. The base image ships them; remove them first.
RUN python -m pip uninstall --yes pip setuptools wheel \
 && rm -f /usr/local/bin/pip /usr/local/bin/pip3 /usr/local/bin/pip3.11 \
 && ! python -c "import pip" 2>/dev/null

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
