# syntax=docker/dockerfile:1
# chainop operator image: `docker build -t ghcr.io/chainop/chainop:0.1.0 .`
#
# Stages: `deps` makes a virtualenv at /opt/chainop with chainop's dependencies only (it
# depends on pyproject.toml alone, so a code change reuses it: a rebuild takes seconds);
# `venv` is that venv without pip; `builder` adds a wheel of chainop, installed into /out;
# the runtime stage copies the venv and then chainop onto the same slim Python base, so no
# compiler, pip, cache or source tree ships.
# The base is pinned to an exact Python patch release and Debian suite (bump both stages
# together: the venv's interpreter symlink points at the base image's python). Without a
# registry, `make image` builds FROM a locally made Debian bookworm + python3 3.11 image
# (hack/image-build.sh: --build-arg PYTHON_IMAGE=localhost/chainop-base:bookworm).

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# ---------------------------------------------------------------------------- deps
FROM ${PYTHON_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Only pyproject.toml decides this layer: the dependencies it lists, not chainop's code.
COPY pyproject.toml ./
RUN python3 -m venv /opt/chainop \
 && /opt/chainop/bin/pip install --upgrade pip wheel "setuptools>=69" \
 && /opt/chainop/bin/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' >/tmp/requirements.txt \
 && /opt/chainop/bin/pip install -r /tmp/requirements.txt

FROM deps AS venv
RUN /opt/chainop/bin/pip uninstall --yes pip wheel setuptools \
 && /opt/chainop/bin/python -m compileall -q /opt/chainop

# ---------------------------------------------------------------------------- builder
FROM deps AS builder
COPY README.md ./
COPY operator/ operator/
# chainop alone (no dependencies), laid out under /out as it will sit in the image.
RUN /opt/chainop/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && /opt/chainop/bin/pip install --no-deps --root /out /wheels/chainop-*.whl \
 && site="$(/opt/chainop/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
 && /opt/chainop/bin/python -m compileall -q "/out$site" \
 && PYTHONPATH="/out$site" /opt/chainop/bin/python -m chainop version

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
COPY --from=venv /opt/chainop /opt/chainop
COPY --from=builder /out/ /
ENV PATH=/opt/chainop/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
# /metrics (Prometheus) and kopf's /healthz (liveness/readiness).
EXPOSE 9090 8080
ENTRYPOINT ["chainop"]
CMD ["run", "--all-namespaces"]
