# Two stages, built with BuildKit (RUN --mount). No `# syntax=` line: the builder's own
# Dockerfile frontend is used, so nothing but the base image is pulled.
#   build:   uv (pinned with hashes in requirements-uv.txt) installs the locked dependencies
#            (uv.lock, `uv sync --locked`, as `make run` does) into /venv in a layer of their
#            own, cached until pyproject.toml or uv.lock change; then the package from app/,
#            not editable; bytecode compiled.
#   runtime: the base image, /venv, a non-root user (uid 10001), exec-form CMD.
# ARG BASE: python:3.11-slim by default; `make image` passes an image built from Debian's
# packages instead where no container registry answers (container/base.sh, docs/container.md).
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PYTHON=python3 UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT=/venv \
    UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
WORKDIR /src
# A secret `build-ca` (optional: `--secret id=build-ca,src=/etc/ssl/certs/ca-certificates.crt`)
# is the CA bundle for pip and uv where a TLS-inspecting proxy stands between the build and
# PyPI; it is mounted for the one command and never stored in a layer.
COPY requirements-uv.txt ./
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=build-ca \
    if [ -f /run/secrets/build-ca ]; then export PIP_CERT=/run/secrets/build-ca; fi \
    && python3 -m venv /opt/uv \
    && /opt/uv/bin/pip install -q --require-hashes -r requirements-uv.txt
COPY pyproject.toml uv.lock ./
# client/ (taskstream-client) is a uv workspace member: uv reads its pyproject.toml to check
# the lock; it is a dev dependency only, so nothing of it is installed in the image.
COPY client/pyproject.toml ./client/
RUN --mount=type=cache,target=/root/.cache/uv --mount=type=secret,id=build-ca \
    if [ -f /run/secrets/build-ca ]; then export SSL_CERT_FILE=/run/secrets/build-ca; fi \
    && /opt/uv/bin/uv sync --locked --no-install-project --no-editable
COPY README.md ./
COPY app ./app
RUN --mount=type=cache,target=/root/.cache/uv --mount=type=secret,id=build-ca \
    if [ -f /run/secrets/build-ca ]; then export SSL_CERT_FILE=/run/secrets/build-ca; fi \
    && /opt/uv/bin/uv sync --locked --no-editable

FROM ${BASE}
RUN groupadd --system --gid 10001 taskstream \
    && useradd --system --uid 10001 --gid 10001 --home-dir /srv --no-create-home \
        --shell /usr/sbin/nologin taskstream \
    && mkdir -p /srv/data && chown 10001:10001 /srv/data
# root-owned: the service cannot rewrite its own code
COPY --from=build /venv /venv
ENV PATH=/venv/bin:$PATH PYTHONUNBUFFERED=1 HOST=0.0.0.0 PORT=8081 DATA_DIR=/srv/data
WORKDIR /srv
# numeric, so that Kubernetes' runAsNonRoot can verify it without /etc/passwd
USER 10001:10001
EXPOSE 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request,os; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\",\"8081\")}/livez', timeout=2)"]
CMD ["python", "-m", "app", "serve"]
