# The kubetask-dagster image: the CR bridge (`python -m crd_bridge`, the default command) and the Dagster
# code location (`dagster code-server start -m kubetask_dagster.definitions`, run by Dagster's Helm chart
# from deploy/dagster/values.yaml, which also launches run workers from it).
#
# One Dockerfile for two builds:
#   docker build -t ghcr.io/kubetask-dagster/kubetask-dagster:0.1.0 .
#       public base (python:3.11-slim), packages from PyPI;
#   podman build --network none --build-arg BASE=localhost/debian:bookworm --build-context wheels=<dir> .
#       offline, on a Debian base made by debootstrap and a wheelhouse made on the host
#       (deploy/local/images build does exactly this; see deploy/local/image-sources/README.md).
# Either base works: the packages go into a venv (/opt/kubetask, first on PATH), since Debian's own
# python3 refuses a system-wide pip install (PEP 668).
ARG BASE=python:3.11-slim

# The wheelhouse: empty unless the build overrides this stage with `--build-context wheels=<dir>`
# (podman 4.3+ / buildah, docker buildx). When it holds wheels, pip installs from it alone.
FROM scratch AS wheels

FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    VIRTUAL_ENV=/opt/kubetask \
    PATH=/opt/kubetask/bin:$PATH

# A fixed numeric non-root user: the manifests' runAsUser/runAsGroup (10001) and runAsNonRoot match it.
RUN groupadd --system --gid 10001 kubetask \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/kubetask --create-home --shell /usr/sbin/nologin kubetask \
 && mkdir -p "$DAGSTER_HOME" \
 && chown 10001:10001 "$DAGSTER_HOME" \
 && python3 -m venv "$VIRTUAL_ENV"

WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY kubetask ./kubetask
COPY kubetask_dagster ./kubetask_dagster
COPY crd_bridge ./crd_bridge
COPY kubectl_kubetask ./kubectl_kubetask
# dagster-postgres: the Helm deployment keeps runs, events and schedules in Postgres. constraints.txt:
# the versions the tests ran with.
RUN --mount=type=bind,from=wheels,target=/wheels \
    offline=""; \
    if ls /wheels/*.whl >/dev/null 2>&1; then offline="--no-index --find-links /wheels"; fi; \
    pip install --constraint constraints.txt . "dagster-postgres==0.29.*" $offline \
 && rm -rf /src

WORKDIR /opt/dagster/app
COPY workspace.yaml ./
USER 10001:10001
EXPOSE 8081 3030
CMD ["python", "-m", "crd_bridge"]
