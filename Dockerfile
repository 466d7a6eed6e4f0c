# syntax=docker/dockerfile:1
# chainop operator image: `docker build -t ghcr.io/chainop/chainop:0.1.0 .`
#
# Two stages: the builder makes a wheel of chainop and installs it (with its pinned-by-
# resolution dependencies) into a virtualenv at /opt/chainop; the runtime stage copies only
# that venv onto the same slim Python base, so no compiler, pip cache or source tree ships.
# The base is pinned to an exact Python patch release and Debian suite (bump both stages
# together: the venv's interpreter symlink points at the base image's python).

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# ---------------------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Metadata first: the dependency layer is rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN python -m venv /opt/chainop \
 && /opt/chainop/bin/pip install --upgrade pip wheel \
 && /opt/chainop/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/chainop/bin/pip install /wheels/chainop-*.whl \
 && /opt/chainop/bin/pip uninstall --yes pip wheel \
 && /opt/chainop/bin/python -m compileall -q /opt/chainop \
 && /opt/chainop/bin/chainop version

# ---------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="chainop" \
      org.opencontainers.image.description="Kubernetes operator that keeps LLM provider chains healthy and routes LLM work through them" \
      org.opencontainers.image.source="https://github.com/chainop/chainop" \
      org.opencontainers.image.licenses="Apache-2.0"
# A named non-root user with the uid/gid the Helm chart runs as (65532, as distroless
# "nonroot"): kopf derives its peer identity from the user name when POD_ID is unset.
RUN groupadd --system --gid 65532 chainop \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin chainop
COPY --from=builder /opt/chainop /opt/chainop
ENV PATH=/opt/chainop/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
# /metrics (Prometheus) and kopf's /healthz (liveness/readiness).
EXPOSE 9090 8080
ENTRYPOINT ["chainop"]
CMD ["run", "--all-namespaces"]
