"""``python -m crd_bridge``: parse the flags, load the Kubernetes configuration, wait for the Lease
when asked to, then run the bridge (``runtime``) and kopf (``watch``) until interrupted."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from kubetask.kube.config import load_configuration
from kubetask.logformat import JsonFormatter

from . import watch
from .config import parse_config
from .runtime import Runtime

log = logging.getLogger("crd_bridge")


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    handler = logging.StreamHandler(sys.stderr)
    if config.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"))
    logging.basicConfig(level=getattr(logging, config.log_level, logging.INFO), handlers=[handler])
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    if config.log_level != "DEBUG":  # kopf logs every handled event at INFO
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        configuration = load_configuration(config.kubeconfig or None)
    except Exception as e:  # noqa: BLE001 - any reason means the same: nothing to connect to
        log.error("no Kubernetes configuration: %s", e)
        return 2
    log.info(
        "crd_bridge: API server %s, namespaces %s, Dagster %s (location %s, repository %s, job %s)",
        configuration.host,
        ",".join(config.namespaces) or "(all)",
        config.dagster_url,
        config.location,
        config.repository,
        config.job,
    )
    # --- leader election (crd_bridge.leader): start the bridge only while this process holds the Lease ---
    elector = None
    if config.leader_elect:
        from . import leader

        elector = leader.wait_for_leadership(config, configuration)
        if elector is None:
            return 0
    # ---
    runtime = Runtime(config, configuration)
    runtime.start()
    try:
        asyncio.run(watch.operate(runtime))
    except KeyboardInterrupt:
        pass
    finally:
        runtime.stop()
        if elector is not None:
            elector.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
