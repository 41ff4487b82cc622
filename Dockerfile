# The kubetask-dagster image: the CR bridge (`python -m crd_bridge`, the default command) and the Dagster
# code location (`dagster code-server start -m kubetask_dagster.definitions`, run by Dagster's Helm chart
# from deploy/dagster/values.yaml, which also launches run workers from it).
#
#   docker build -t ghcr.io/kubetask-dagster/kubetask-dagster:0.1.0 .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home

# A fixed numeric non-root user: the manifests' runAsUser/runAsGroup (10001) and runAsNonRoot match it.
RUN groupadd --system --gid 10001 kubetask \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/kubetask --create-home --shell /usr/sbin/nologin kubetask \
 && mkdir -p "$DAGSTER_HOME" \
 && chown 10001:10001 "$DAGSTER_HOME"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY kubetask ./kubetask
COPY kubetask_dagster ./kubetask_dagster
COPY crd_bridge ./crd_bridge
# dagster-postgres: the Helm deployment keeps runs, events and schedules in Postgres.
RUN pip install . "dagster-postgres==0.29.*" \
 && rm -rf /src

WORKDIR /opt/dagster/app
COPY workspace.yaml ./
USER 10001:10001
EXPOSE 8081 3030
CMD ["python", "-m", "crd_bridge"]
