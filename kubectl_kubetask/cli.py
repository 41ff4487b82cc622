"""``kubectl kubetask``: the command line, read as a table of contents of ``commands``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from . import commands
from .cluster import Cluster
from .errors import PluginError
from .kinds import parse_kind

COMMANDS: dict[str, tuple[str, Callable[[commands.Session, argparse.Namespace], int]]] = {
    "logs": (
        "the agent container's log of a Task's attempt (from its pod, else the copy kept in Dagster)",
        lambda s, a: commands.logs(s, a.task, attempt=a.attempt, follow=a.follow),
    ),
    "describe": (
        "a Task's chain: its status, its Job, the pod, the Dagster run and the run's status",
        lambda s, a: commands.describe(s, a.task),
    ),
    "stop": (
        "stop a Task or a BatchRun (annotation kubetask.io/stop=true)",
        lambda s, a: commands.stop(s, a.name, a.kind),
    ),
    "pause": (
        "pause a BatchRun: no new Task starts (annotation kubetask.io/pause=true)",
        lambda s, a: commands.pause(s, a.batchrun),
    ),
    "resume": (
        "resume a paused BatchRun (removes kubetask.io/pause)",
        lambda s, a: commands.resume(s, a.batchrun),
    ),
    "rerun": (
        "re-run a finished BatchRun's failed and never-started Tasks (annotation kubetask.io/rerun=failed)",
        lambda s, a: commands.rerun(s, a.batchrun),
    ),
    "open": (
        "print the Dagster run's URL of a Task or BatchRun and open it in a browser",
        lambda s, a: commands.open_run(s, a.name, a.kind, print_only=a.print_only),
    ),
    "watch": (
        "a live progress line of a BatchRun until it ends; exit code 0 when it Completed",
        lambda s, a: commands.watch(s, a.batchrun, interval=a.interval),
    ),
}


def _kind(text: str) -> object:
    try:
        return parse_kind(text)
    except PluginError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("attempts count from 1")
    return value


def _globals(suppress: bool) -> argparse.ArgumentParser:
    """The flags every command takes, before or after its name (kubectl passes them on as given)."""
    default = argparse.SUPPRESS if suppress else None
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "-n", "--namespace", default=default, help="namespace (default: the kubeconfig context's, else default)"
    )
    p.add_argument("--kubeconfig", default=default, help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")
    p.add_argument("--context", default=default, help="kubeconfig context (default: the current one)")
    p.add_argument(
        "--dagster-url",
        default=default,
        help="Dagster's webserver (default: $KUBETASK_DAGSTER_URL, else the origin of status.dagsterRunUrl)",
    )
    return p


def parser() -> argparse.ArgumentParser:
    """The whole command line."""
    top = argparse.ArgumentParser(
        prog="kubectl kubetask",
        description="Tasks and BatchRuns of kubetask.io: logs, describe, stop, pause, resume, rerun, open, watch.",
        parents=[_globals(suppress=False)],
    )
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    flags = _globals(suppress=True)
    made = {
        name: sub.add_parser(name, help=text, description=text, parents=[flags]) for name, (text, _) in COMMANDS.items()
    }

    made["logs"].add_argument("task", metavar="TASK")
    made["logs"].add_argument("-f", "--follow", action="store_true", help="keep streaming while the agent runs")
    made["logs"].add_argument("--attempt", type=_positive, help="the attempt (default: the last, status.attempt)")
    made["describe"].add_argument("task", metavar="TASK")
    for name in ("stop", "open"):
        made[name].add_argument(
            "name", metavar="TASK|BATCHRUN", help="a name (a Task is tried first), or task/NAME, batchrun/NAME"
        )
        made[name].add_argument("--kind", type=_kind, help="task or batchrun: do not guess")
    made["open"].add_argument("--print-only", action="store_true", help="print the URL, open no browser")
    for name in ("pause", "resume", "rerun", "watch"):
        made[name].add_argument("batchrun", metavar="BATCHRUN")
    made["rerun"].add_argument(
        "--failed",
        action="store_true",
        required=True,
        help="the failed and never-started Tasks (the only rerun there is)",
    )
    made["watch"].add_argument("--interval", type=float, default=1.0, help="seconds between reads (default 1)")
    return top


def run(argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    """Parse ``argv``, run the command; a ``PluginError`` becomes one line on ``err`` and exit code 1."""
    try:
        args = parser().parse_args(list(argv))
    except SystemExit as e:  # --help, or a usage error argparse has printed
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    try:
        cluster = Cluster(args.kubeconfig, args.context, args.namespace)
        session = commands.Session(cluster, out, err, dagster_url=args.dagster_url, env=os.environ)
        return COMMANDS[args.command][1](session, args)
    except PluginError as e:
        err.write(f"error: {e}\n")
        return 1
    except KeyboardInterrupt:
        err.write("\n")
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """The ``kubectl-kubetask`` console script."""
    try:
        return run(sys.argv[1:] if argv is None else argv, sys.stdout, sys.stderr)
    except BrokenPipeError:  # `kubectl kubetask logs x | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
