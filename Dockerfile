# syntax=docker/dockerfile:1
# road-monitor fleet server (API + dashboard, and the ingest workers: same image, other command).
#   docker build -t road-monitor/fleet-server .
#   docker run --rm road-monitor/fleet-server --help

# ---- build: resolve and compile the dependencies into a venv
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, so that a code change does not re-download them.
COPY pyproject.toml README.md ./
RUN python -c "import subprocess, sys, tomllib; \
p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
subprocess.run([sys.executable, '-m', 'pip', 'install', *p['dependencies'], *p['optional-dependencies']['server']], \
               check=True)"
# The server and the contract only: the server imports nothing of the agent (tests/test_layout.py).
COPY fleet_server fleet_server
COPY roadmon_contract roadmon_contract
# pyproject's data-files are the agent's bundled model, which is not in this context (.dockerignore): setuptools
# refuses a missing data file, and the server never loads the model.
RUN sed -i '/^\[tool.setuptools.data-files\]/,/^$/d' pyproject.toml \
 && pip install --no-deps . \
 && fleet-server --help >/dev/null

# ---- runtime: the venv only, no compilers, no source tree, not root
FROM python:3.11-slim-bookworm AS runtime
RUN groupadd --system --gid 10001 roadmon \
 && useradd --system --uid 10001 --gid roadmon --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin roadmon \
 && install -d -o roadmon -g roadmon -m 0750 /var/lib/fleet-server /var/lib/fleet-server/models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    ROADMON_SERVER_CONFIG=/etc/fleet-server/server.toml
COPY deploy/server.toml /etc/fleet-server/server.toml
USER 10001:10001
WORKDIR /var/lib/fleet-server
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4)"]
ENTRYPOINT ["fleet-server"]
CMD ["serve", "--workers", "0"]
