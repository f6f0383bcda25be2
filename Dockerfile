# syntax=docker/dockerfile:1
#
# Lumbar CDS: the CDS Hooks service as a container image. Build from the repository root:
#
#   docker build -t lumbar-cds:0.1.0 .
#
# Run on one machine (SQLite in a named volume; add LUMBAR_CLIENTS_FILE for your EHRs, see docs/security.md):
#
#   docker run -d -p 8000:8000 -v lumbar-data:/var/lib/lumbar lumbar-cds:0.1.0
#
# Serve your own rule catalogue instead of the bundled one (checked at start-up, reloaded when it changes):
#
#   docker run ... -v ./my-rules:/etc/lumbar/rules:ro -e LUMBAR_RULES_DIR=/etc/lumbar/rules lumbar-cds:0.1.0
#
# Any other command of the `lumbar` CLI runs the same way: docker run --rm lumbar-cds:0.1.0 check /etc/...
# Settings are the LUMBAR_* environment variables of the README; deployment guide: docs/deployment.md.

# One base for both stages: a virtualenv only works with the interpreter, at the same path, it was made with.
# An exact patch release; for byte-for-byte rebuilds also pin its digest
# (`docker buildx imagetools inspect python:3.11.16-slim-bookworm`, then FROM python:...@sha256:...).
ARG PYTHON_IMAGE=python:3.11.16-slim-bookworm

# ---- builder: build the project's wheel and install it with its dependencies into /opt/lumbar ----------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN python -m venv /opt/lumbar

WORKDIR /src
# Only what the wheel is built from (the context is an allow-list, see .dockerignore).
COPY pyproject.toml README.md ./
COPY cds_hooks/ cds_hooks/
COPY rules/ rules/
COPY service/ service/

# A real wheel, not an editable install: the rule catalogue and the migrations travel as package data, so a
# file missing from [tool.setuptools.package-data] fails the checks in the runtime stage, not a rollout.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/lumbar/bin/pip install /wheels/lumbar_cds-*.whl \
 && /opt/lumbar/bin/python -c "import uvloop, httptools, asyncpg, aiosqlite"

# ---- runtime: the interpreter, the virtualenv, an unprivileged user -----------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="lumbar-cds" \
      org.opencontainers.image.description="CDS Hooks 2.0 decision support for low back pain" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed uid/gid, so Kubernetes (runAsUser 10001) and bind-mounted host directories can match it.
# /var/lib/lumbar (LUMBAR_DATA_DIR) is the only place the service writes (the SQLite database, the audit spill
# folder); the rest stays read-only.
RUN groupadd --system --gid 10001 lumbar \
 && useradd --system --uid 10001 --gid lumbar --home-dir /var/lib/lumbar --no-create-home \
        --shell /usr/sbin/nologin lumbar \
 && install -d -o lumbar -g lumbar -m 0750 /var/lib/lumbar

COPY --from=builder /opt/lumbar /opt/lumbar

ENV PATH=/opt/lumbar/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LUMBAR_DATA_DIR=/var/lib/lumbar

WORKDIR /var/lib/lumbar
USER 10001:10001

# The image that ships is the one checked: a catalogue that does not load, or whose embedded test cases
# fail, fails the build.
RUN lumbar check && lumbar test

VOLUME ["/var/lib/lumbar"]
EXPOSE 8000

# Liveness only (no curl in slim images); readiness (/readyz: rules and database) is the orchestrator's job.
# The port is the one in CMD: change both together.
HEALTHCHECK --interval=30s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]

# `lumbar serve` checks the catalogue, runs the database migrations once, then starts the workers.
ENTRYPOINT ["lumbar"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
