"""Settings of the bridge: command-line flags, each with an environment variable as its default.

Precedence: flag > environment variable > built-in default. ``python -m crd_bridge --help`` lists them.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

ENV_PREFIX = "KUBETASK_BRIDGE_"


@dataclass(frozen=True)
class BridgeConfig:
    """Everything the bridge needs to know; immutable once parsed."""

    kubeconfig: str | None = None
    """Path of a kubeconfig; None: $KUBECONFIG, else in-cluster, else ~/.kube/config."""
    namespaces: tuple[str, ...] = ()
    """Watched namespaces; empty: cluster-wide."""
    dagster_url: str = "http://127.0.0.1:3000"
    """Base URL of dagster-webserver (GraphQL at ``<url>/graphql``)."""
    dagster_ui_url: str = "http://127.0.0.1:3000"
    """Base URL used in ``status.dagsterRunUrl`` (``<url>/runs/<id>``)."""
    location: str = "kubetask"
    repository: str = "__repository__"
    job: str = "task_job"
    health_host: str = "127.0.0.1"
    health_port: int = 8081
    drift_interval: float = 5.0
    """Seconds between periodic passes (drift check, queue re-check, retries)."""
    drift_grace: float = 5.0
    """Seconds after a Dagster run ended before the bridge writes a terminal status the run did not write."""
    orphan_interval: float = 60.0
    """Seconds between sweeps for active Dagster runs of deleted Tasks."""
    relist_interval: float = 300.0
    """Seconds between full re-lists of Tasks and WorkspaceConfigs (repairs the cache if a watch missed a deletion)."""
    workers: int = 4
    """Threads reconciling Tasks."""
    batch_job: str = "batch_job"
    """Dagster job run per BatchRun."""
    batchrun_workers: int = 2
    """Threads reconciling BatchRuns."""
    batchrun_debounce: float = 1.0
    """Minimum seconds between two progress writes of one BatchRun's status."""
    pool_max_tasks: int = 200
    """The most standalone Tasks one pooled Dagster run takes (1: every Task gets a run of its own)."""
    pool_window: float = 0.25
    """A pool's run is launched once this many seconds passed without a new Task of its burst."""
    pool_max_gather: float = 1.0
    """The most seconds a pool gathers while its burst's Tasks keep coming."""
    pool_linger: float = 5.0
    """Seconds a burst is taken to go on after its last pool: Tasks arriving meanwhile wait (up to this
    long) for ``pool_min_waiting`` of them to share the next pool."""
    pool_min_waiting: int = 8
    """Tasks of one WorkspaceConfig waiting for a run at once, or arriving within ``pool_max_gather`` seconds,
    that make a burst (fewer: a run each)."""
    dagster_timeout: float = 10.0
    """HTTP timeout of one GraphQL request."""
    log_level: str = "INFO"
    log_format: str = "text"
    # --- leader election (crd_bridge.leader) ---
    leader_elect: bool = False
    """Run only while holding the Lease (two replicas are safe); off for local development."""
    leader_election_namespace: str | None = None
    """Namespace of the Lease; None: the pod's namespace, else kubetask-system."""
    leader_election_lease: str = "kubetask-bridge"
    run_worker: str | None = None
    """The run workers' user (``system:serviceaccount:<ns>:<name>``): a Task or BatchRun in a namespace where
    it may not create Jobs fails with NamespaceNotEnabled (crd_bridge.tenancy). None: not checked, as when
    the run worker has an admin's rights (the local stack)."""

    @property
    def health_bind(self) -> str:
        return f"{self.health_host}:{self.health_port}"

    def run_url(self, run_id: str) -> str:
        return f"{self.dagster_ui_url.rstrip('/')}/runs/{run_id}"


def _split_namespaces(values: Sequence[str] | None) -> tuple[str, ...]:
    out: list[str] = []
    for value in values or ():
        for part in value.split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    return tuple(out)


def _bind(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host or "127.0.0.1", int(port)


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def _base_url(text: str) -> str:
    text = text.strip().rstrip("/")
    if text.endswith("/graphql"):
        text = text[: -len("/graphql")]
    return text


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    env = os.environ if env is None else env

    def e(name: str, default: str | None = None) -> str | None:
        return env.get(ENV_PREFIX + name, default)

    p = argparse.ArgumentParser(
        prog="python -m crd_bridge",
        description=(
            "Watch kubetask.io Tasks and run each one as a Dagster run of task_job: submit idempotently, "
            "queue by WorkspaceConfig.maxConcurrentTasks, stop on the kubetask.io/stop annotation or deletion, "
            "and fail Tasks whose run ended without writing their status. Watch BatchRuns and run each one as "
            "a run of batch_job: keep its progress, pause, stop, rerun failed Tasks, record how it ended."
        ),
        epilog=f"Every flag defaults to the environment variable in brackets (prefix {ENV_PREFIX}).",
    )
    p.add_argument(
        "--kubeconfig",
        default=env.get("KUBECONFIG") or None,
        help="kubeconfig file [KUBECONFIG]; without it: in-cluster, else ~/.kube/config",
    )
    p.add_argument(
        "--namespace",
        "-n",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="watch only this namespace (repeatable, or a comma list) [NAMESPACES]; default: all",
    )
    p.add_argument(
        "--dagster-url",
        default=e("DAGSTER_URL", "http://127.0.0.1:3000"),
        help="dagster-webserver base URL [DAGSTER_URL] (default %(default)s)",
    )
    p.add_argument(
        "--dagster-ui-url",
        default=e("DAGSTER_UI_URL"),
        help="base URL of run links in Task status [DAGSTER_UI_URL] (default: --dagster-url)",
    )
    p.add_argument(
        "--location", default=e("LOCATION", "kubetask"), help="Dagster code location [LOCATION] (default %(default)s)"
    )
    p.add_argument(
        "--repository",
        default=e("REPOSITORY", "__repository__"),
        help="Dagster repository [REPOSITORY] (default %(default)s)",
    )
    p.add_argument("--job", default=e("JOB", "task_job"), help="Dagster job run per Task [JOB] (default %(default)s)")
    p.add_argument(
        "--health-bind",
        type=_bind,
        default=e("HEALTH_BIND", "127.0.0.1:8081"),
        help="HOST:PORT of /healthz, /readyz and /metrics [HEALTH_BIND] (default %(default)s)",
    )
    p.add_argument(
        "--drift-interval",
        type=_positive_float,
        default=e("DRIFT_INTERVAL", "5"),
        help="seconds between periodic passes [DRIFT_INTERVAL] (default %(default)s)",
    )
    p.add_argument(
        "--drift-grace",
        type=float,
        default=e("DRIFT_GRACE", "5"),
        help="seconds after a run ended before the bridge writes the Task's terminal status "
        "[DRIFT_GRACE] (default %(default)s)",
    )
    p.add_argument(
        "--orphan-interval",
        type=_positive_float,
        default=e("ORPHAN_INTERVAL", "60"),
        help="seconds between sweeps terminating runs of deleted Tasks [ORPHAN_INTERVAL] (default %(default)s)",
    )
    p.add_argument(
        "--relist-interval",
        type=_positive_float,
        default=e("RELIST_INTERVAL", "300"),
        help="seconds between full re-lists of Tasks [RELIST_INTERVAL] (default %(default)s)",
    )
    p.add_argument(
        "--workers", type=int, default=e("WORKERS", "4"), help="reconcile threads [WORKERS] (default %(default)s)"
    )
    p.add_argument(
        "--batch-job",
        default=e("BATCH_JOB", "batch_job"),
        help="Dagster job run per BatchRun [BATCH_JOB] (default %(default)s)",
    )
    p.add_argument(
        "--batchrun-workers",
        type=int,
        default=e("BATCHRUN_WORKERS", "2"),
        help="BatchRun reconcile threads [BATCHRUN_WORKERS] (default %(default)s)",
    )
    p.add_argument(
        "--batchrun-debounce",
        type=float,
        default=e("BATCHRUN_DEBOUNCE", "1"),
        help="minimum seconds between progress writes of one BatchRun [BATCHRUN_DEBOUNCE] (default %(default)s)",
    )
    p.add_argument(
        "--pool-max-tasks",
        type=int,
        default=e("POOL_MAX_TASKS", "200"),
        help="the most standalone Tasks in one pooled Dagster run; 1 turns pooling off [POOL_MAX_TASKS] (default %(default)s)",
    )
    p.add_argument(
        "--pool-window",
        type=float,
        default=e("POOL_WINDOW", "0.25"),
        help="a pool's run is launched once this many seconds passed without a new Task [POOL_WINDOW] "
        "(default %(default)s)",
    )
    p.add_argument(
        "--pool-max-gather",
        type=float,
        default=e("POOL_MAX_GATHER", "1"),
        help="the most seconds a pool gathers while Tasks keep coming [POOL_MAX_GATHER] (default %(default)s)",
    )
    p.add_argument(
        "--pool-linger",
        type=float,
        default=e("POOL_LINGER", "5"),
        help="seconds a burst is taken to go on after its last pool: Tasks arriving meanwhile wait up to this "
        "long to share the next one [POOL_LINGER] (default %(default)s)",
    )
    p.add_argument(
        "--pool-min-waiting",
        type=int,
        default=e("POOL_MIN_WAITING", "8"),
        help="Tasks of one WorkspaceConfig waiting at once, or arriving within --pool-max-gather seconds, that make "
        "a burst worth a pooled run [POOL_MIN_WAITING] "
        "(default %(default)s)",
    )
    p.add_argument(
        "--dagster-timeout",
        type=_positive_float,
        default=e("DAGSTER_TIMEOUT", "10"),
        help="HTTP timeout of one GraphQL request, seconds [DAGSTER_TIMEOUT] (default %(default)s)",
    )
    p.add_argument(
        "--log-level", default=e("LOG_LEVEL", "INFO"), help="DEBUG, INFO, WARNING... [LOG_LEVEL] (default %(default)s)"
    )
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=e("LOG_FORMAT", "text"),
        help="text, or json: one JSON object per line [LOG_FORMAT] (default %(default)s)",
    )
    # --- leader election (crd_bridge.leader) ---
    p.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=(e("LEADER_ELECT", "") or "").strip().lower() in ("1", "true", "yes", "on"),
        help="watch and reconcile only while holding the Lease [LEADER_ELECT] (default: off)",
    )
    p.add_argument(
        "--leader-election-namespace",
        default=e("LEADER_ELECTION_NAMESPACE"),
        help="namespace of the Lease [LEADER_ELECTION_NAMESPACE] (default: the pod's, else kubetask-system)",
    )
    p.add_argument(
        "--leader-election-lease",
        default=e("LEADER_ELECTION_LEASE", "kubetask-bridge"),
        help="name of the Lease [LEADER_ELECTION_LEASE] (default %(default)s)",
    )
    p.add_argument(
        "--run-worker",
        default=e("RUN_WORKER"),
        metavar="USER",
        help="the run workers' user, e.g. system:serviceaccount:dagster:kubetask-run-worker: Tasks in namespaces where "
        "it may not create Jobs fail with NamespaceNotEnabled [RUN_WORKER] (default: not checked)",
    )
    return p


def parse_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> BridgeConfig:
    """Parse flags (``argv``, default ``sys.argv[1:]``) over environment variables (default ``os.environ``)."""
    env = os.environ if env is None else env
    args = build_parser(env).parse_args(argv)
    namespaces = _split_namespaces(args.namespaces) or _split_namespaces([env.get(ENV_PREFIX + "NAMESPACES", "")])
    host, port = args.health_bind if isinstance(args.health_bind, tuple) else _bind(args.health_bind)
    dagster_url = _base_url(args.dagster_url)
    return BridgeConfig(
        kubeconfig=args.kubeconfig,
        namespaces=namespaces,
        dagster_url=dagster_url,
        dagster_ui_url=_base_url(args.dagster_ui_url) if args.dagster_ui_url else dagster_url,
        location=args.location,
        repository=args.repository,
        job=args.job,
        health_host=host,
        health_port=port,
        drift_interval=float(args.drift_interval),
        drift_grace=max(0.0, float(args.drift_grace)),
        orphan_interval=float(args.orphan_interval),
        relist_interval=float(args.relist_interval),
        workers=max(1, int(args.workers)),
        batch_job=args.batch_job,
        batchrun_workers=max(1, int(args.batchrun_workers)),
        batchrun_debounce=max(0.0, float(args.batchrun_debounce)),
        pool_max_tasks=max(1, int(args.pool_max_tasks)),
        pool_window=max(0.0, float(args.pool_window)),
        pool_max_gather=max(0.0, float(args.pool_max_gather)),
        pool_linger=max(0.0, float(args.pool_linger)),
        pool_min_waiting=max(1, int(args.pool_min_waiting)),
        dagster_timeout=float(args.dagster_timeout),
        log_level=str(args.log_level).upper(),
        log_format=str(args.log_format),
        leader_elect=bool(args.leader_elect),
        leader_election_namespace=args.leader_election_namespace or None,
        leader_election_lease=args.leader_election_lease,
        run_worker=args.run_worker or None,
    )
