# syntax=docker/dockerfile:1
# Two stages: dependencies in a layer of their own (cached until pyproject.toml changes),
# then the code. Runtime image: slim Python, non-root, bytecode compiled, exec-form CMD.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /venv
COPY pyproject.toml README.md ./
# Install only the dependencies first (an empty package stands in for the code).
RUN --mount=type=cache,target=/root/.cache/pip \
    mkdir -p app && echo '__version__ = "0"' > app/__init__.py \
    && /venv/bin/pip install . && /venv/bin/pip uninstall -y taskstream
COPY app ./app
RUN --mount=type=cache,target=/root/.cache/pip \
    /venv/bin/pip install --no-deps . && /venv/bin/python -m compileall -q /venv

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /srv taskstream \
    && mkdir -p /srv/data && chown taskstream /srv/data
COPY --from=build /venv /venv
ENV PATH=/venv/bin:$PATH PYTHONUNBUFFERED=1 HOST=0.0.0.0 PORT=8081 DATA_DIR=/srv/data
WORKDIR /srv
USER taskstream
EXPOSE 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request,os; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\",\"8081\")}/livez', timeout=2)"]
CMD ["python", "-m", "app", "serve"]
