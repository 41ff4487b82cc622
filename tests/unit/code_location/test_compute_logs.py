"""The local stack's compute log manager: a captured process's output kept on disk, no process started.
(The integration tests read the agent logs that run workers keep through it: test_kubectl_plugin.py.)

Each capture runs in a fresh interpreter whose stdout and stderr are file descriptors 1 and 2, as a run
worker's are (pytest's own capture would stand between them and the redirect)."""

import json
import subprocess
import sys
import textwrap

from kubetask_dagster.local.compute_logs import UnmirroredComputeLogManager

CAPTURE = textwrap.dedent("""
    import json, os, subprocess, sys
    from dagster._core.storage.compute_log_manager import ComputeIOType
    from dagster._core.test_utils import instance_for_test

    spawned = []
    real = subprocess.Popen
    def record(args, *rest, **kwargs):
        spawned.append(list(args))
        return real(args, *rest, **kwargs)
    subprocess.Popen = record

    overrides = json.loads(sys.argv[2])
    key = ["a-run-id", "compute_logs", "abcdefgh"]
    with instance_for_test(temp_dir=sys.argv[1], overrides=overrides) as instance:
        manager = instance.compute_log_manager
        with manager.capture_logs(key):
            print("from python's print", flush=True)
            os.write(1, b"from the file descriptor\\n")
            os.system("echo from a child process; echo to stderr >&2")
        data = manager.get_log_data(key)
        keys = manager.get_log_keys_for_log_key_prefix(key[:2], io_type=ComputeIOType.STDOUT)
        print(json.dumps({"manager": type(manager).__name__, "complete": manager.is_capture_complete(key),
                          "keys": keys, "spawned": spawned,
                          "out": (data.stdout or b"").decode(), "err": (data.stderr or b"").decode()}))
""")


def capture(tmp_path, overrides: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", CAPTURE, str(tmp_path), json.dumps(overrides)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_capture_keeps_every_kind_of_output_without_starting_a_process(tmp_path):
    unmirrored = {"compute_logs": {"module": "kubetask_dagster.local.compute_logs",
                                   "class": "UnmirroredComputeLogManager"}}
    seen = capture(tmp_path, unmirrored)
    assert seen["manager"] == "UnmirroredComputeLogManager" and seen["complete"]
    assert seen["out"] == "from python's print\nfrom the file descriptor\nfrom a child process\n", seen
    assert seen["err"] == "to stderr\n"
    assert seen["keys"] == [["a-run-id", "compute_logs", "abcdefgh"]]
    assert seen["spawned"] == []


def test_dagsters_own_manager_starts_a_tail_and_an_interpreter_per_stream(tmp_path):
    """What the manager saves: the same capture with Dagster's LocalComputeLogManager."""
    seen = capture(tmp_path, {})
    assert seen["manager"] == "LocalComputeLogManager"
    assert "from a child process" in seen["out"]
    assert sum(args[0] == "tail" for args in seen["spawned"]) == 2, seen["spawned"]
    assert sum("watch_orphans" in " ".join(args) for args in seen["spawned"]) == 2, seen["spawned"]


def test_base_dir_defaults_to_dagster_homes_storage(monkeypatch, tmp_path):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    assert UnmirroredComputeLogManager()._base_dir == str(tmp_path / "storage")


def test_a_configured_base_dir_is_kept():
    assert UnmirroredComputeLogManager("/var/dagster/logs")._base_dir == "/var/dagster/logs"
