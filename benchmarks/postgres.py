"""A throwaway PostgreSQL server for benchmarks: installed with apt if missing, initialised under the
benchmark's run root, listening on 127.0.0.1 only, stopped at exit.

    python benchmarks/postgres.py    # self-check: start, create Dagster's schema in it, stop
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

USER = "postgres"  # the server's superuser role and, when we are root, the OS user it runs as
DATABASE = "dagster"


def _bindir() -> Path | None:
    """A directory with initdb, pg_ctl and postgres: Debian's newest /usr/lib/postgresql/<ver>/bin, else PATH."""

    def usable(d: Path) -> bool:
        return all(os.access(d / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres"))

    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0
    )
    for d in reversed(versions):
        if usable(d):
            return d
    found = shutil.which("pg_ctl")
    if found and usable(Path(found).resolve().parent):
        return Path(found).resolve().parent
    return None


def ensure_installed() -> Path:
    """Find the server binaries, installing Debian's postgresql package first when they are missing."""
    bindir = _bindir()
    if bindir:
        return bindir
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"]
    if subprocess.run(install, env=env).returncode != 0:  # no package lists yet: update, then try again
        subprocess.run(["apt-get", "update"], env=env, check=True)
        subprocess.run(install, env=env, check=True)
    bindir = _bindir()
    if not bindir:
        raise RuntimeError("postgresql is installed but initdb/pg_ctl/postgres were not found")
    return bindir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server(run_root: Path):
    """Start a fresh server in run_root/postgres; yield its URL (database `dagster`); stop it, even on errors."""
    bindir = ensure_installed()
    base = Path(run_root) / "postgres"
    data, sockets, log = base / "data", base / "socket", base / "server.log"
    sockets.mkdir(parents=True)
    as_server: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        try:
            pw = pwd.getpwnam(USER)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER], check=True
            )
            pw = pwd.getpwnam(USER)
        as_server = ["runuser", "-u", USER, "--"]
        # mkdtemp makes run_root 0700: let the server's user pass through it (not list it) to its own directory.
        mode = Path(run_root).stat().st_mode
        if not mode & stat.S_IXOTH:
            Path(run_root).chmod(mode | stat.S_IXOTH)
        for path in (base, sockets):
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def server(*args: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([*as_server, *args], cwd=base, check=True, capture_output=True, text=True, **kwargs)

    port = _free_port()
    started = False
    try:
        server(
            str(bindir / "initdb"), "-D", str(data), "-U", USER, "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"
        )
        with open(data / "postgresql.conf", "a") as conf:  # data is the server user's; we are root or that user
            conf.write(
                "\n# benchmarks/postgres.py\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {port}\n"
                f"unix_socket_directories = '{sockets}'\n"
                "max_connections = 200\n"  # run workers, daemon threads and the webserver each connect (NullPool)
            )
        started = True
        server(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "start")
        subprocess.run(
            [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", USER, DATABASE],
            check=True,
            capture_output=True,
            text=True,
        )
    except BaseException as e:
        _stop(as_server, bindir, data, base, started)
        if isinstance(e, subprocess.CalledProcessError):
            tail = log.read_text()[-3000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(map(str, e.cmd))} failed ({e.returncode}): {e.stderr}\n{tail}") from e
        raise
    try:
        yield f"postgresql://{USER}@127.0.0.1:{port}/{DATABASE}"
    finally:
        _stop(as_server, bindir, data, base, started)


def server_pid(run_root: Path) -> int:
    """The postmaster's pid (its backends are its children) of the server postgres_server(run_root) started."""
    return int((Path(run_root) / "postgres" / "data" / "postmaster.pid").read_text().split()[0])


def _stop(as_server: list[str], bindir: Path, data: Path, cwd: Path, started: bool) -> None:
    if started:
        subprocess.run(
            [*as_server, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"],
            cwd=cwd,
            capture_output=True,
        )


def dagster_storage_yaml(url: str) -> str:
    """The dagster.yaml block that puts runs, event logs and schedules in the server at url.

    The driver is named: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, while dagster-postgres
    brings psycopg2."""
    return f'\nstorage:\n  postgres:\n    postgres_url: "{sqlalchemy_url(url)}"\n'


def sqlalchemy_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg2://", 1)


def main() -> int:
    """Self-check: start a server, create Dagster's schema in it from a DAGSTER_HOME that points at it, stop."""
    run_root = Path(tempfile.mkdtemp(prefix="kubetask-pg-check-"))
    try:
        with postgres_server(run_root) as url:
            home = run_root / "dagster"
            home.mkdir()
            (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n" + dagster_storage_yaml(url))
            os.environ["DAGSTER_HOME"] = str(home)
            import psycopg2
            from dagster import DagsterInstance

            with DagsterInstance.get() as instance:
                instance.get_runs(limit=1)
                instance.event_log_storage.get_asset_records()
                instance.schedule_storage.all_instigator_state()
                kinds = {
                    name: type(getattr(instance, name)).__name__
                    for name in ("run_storage", "event_log_storage", "schedule_storage")
                }
            with psycopg2.connect(url) as conn, conn.cursor() as cur:
                cur.execute("select version()")
                version = cur.fetchone()[0]
                cur.execute("select count(*) from information_schema.tables where table_schema = 'public'")
                tables = cur.fetchone()[0]
            print(f"{url}: {version.split(' on ')[0]}; storages {kinds}; {tables} tables")
        return 0
    finally:
        shutil.rmtree(run_root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
