"""A throwaway PostgreSQL server for tests and benchmarks.

``postgres_dsn`` (pytest fixture, session scope) yields a DSN of a fresh server and stops it at
the end; it skips when the PostgreSQL binaries are missing. Outside pytest (crash tests,
benchmarks) use ``start_postgres`` / ``restart_postgres`` / ``stop_postgres``:

    dsn, server = start_postgres(tmpdir)
    ...
    restart_postgres(server)      # same data directory and port: clients see a server restart
    stop_postgres(server)

The server listens on 127.0.0.1 only (a free port), with its unix socket in the temporary
directory and trust authentication, superuser ``postgres``. PostgreSQL refuses to run as root,
so under root the server runs as the ``postgres`` system user, which then owns the data
directory. ``python pg_server.py`` starts one and prints its DSN until interrupted.
"""
from __future__ import annotations

import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass

import pytest

# Debian's PostgreSQL 15 keeps its server binaries off PATH; CUSENSE_PG_BINDIR overrides both.
_BINDIR_CANDIDATES = ["/usr/lib/postgresql/15/bin"]
_SERVER_USER = "postgres"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be started here (binaries or the postgres user missing)."""


@dataclass
class PostgresServer:
    bindir: str
    datadir: str
    socket_dir: str
    logfile: str
    port: int
    run_as: str | None            # the system user running the server; None: the current user
    dsn: str
    remove_on_stop: str | None    # a directory this module created outside the caller's tmpdir
    running: bool = False


def _find_bindir() -> str:
    candidates = [os.environ.get("CUSENSE_PG_BINDIR", "")] + _BINDIR_CANDIDATES
    on_path = shutil.which("pg_ctl")
    if on_path:
        # pg_ctl finds `postgres` next to itself, so resolve symlinks such as /usr/local/bin.
        candidates.append(os.path.dirname(os.path.realpath(on_path)))
    for bindir in candidates:
        if bindir and all(os.access(os.path.join(bindir, exe), os.X_OK)
                          for exe in ("initdb", "pg_ctl", "postgres")):
            return bindir
    raise PostgresUnavailable("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found "
                              "on PATH nor in " + ", ".join(_BINDIR_CANDIDATES))


def _command(run_as: str | None, args: list[str]) -> list[str]:
    if run_as is None:
        return args
    if shutil.which("runuser"):
        return ["runuser", "-u", run_as, "--", *args]
    return ["su", run_as, "-s", "/bin/sh", "-c", shlex.join(args)]


def _run(run_as: str | None, args: list[str], cwd: str) -> subprocess.CompletedProcess:
    # cwd: a directory the server user can enter (pg_ctl and initdb chdir back to it).
    return subprocess.run(_command(run_as, args), cwd=cwd, capture_output=True, text=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _base_dir(tmpdir: str, run_as: str | None) -> tuple[str, str | None]:
    """A directory for the data directory, socket and log, writable by the server user:
    (directory, directory to remove on stop or None)."""
    base = tempfile.mkdtemp(prefix="pg-", dir=tmpdir)
    if run_as is None:
        return base, None
    user = pwd.getpwnam(run_as)
    os.chown(base, user.pw_uid, user.pw_gid)
    if _run(run_as, ["test", "-w", base], cwd="/").returncode == 0:
        return base, None
    # The caller's tmpdir lies under directories the server user cannot enter (pytest's are
    # 0700 root): use a fresh directory in the system temporary directory instead.
    os.rmdir(base)
    base = tempfile.mkdtemp(prefix="cusense-pg-")
    os.chown(base, user.pw_uid, user.pw_gid)
    return base, base


def _pg_ctl_start(server: PostgresServer) -> subprocess.CompletedProcess:
    return _run(server.run_as, [os.path.join(server.bindir, "pg_ctl"), "-D", server.datadir,
                                "-l", server.logfile, "-w", "-t", "60", "start"],
                cwd=server.socket_dir)


def _log_tail(server: PostgresServer) -> str:
    try:
        with open(server.logfile) as f:
            return "".join(f.readlines()[-20:])
    except OSError:
        return ""


def start_postgres(tmpdir, settings: dict | None = None) -> tuple[str, PostgresServer]:
    """initdb into a new directory under ``tmpdir`` and start a server; returns (dsn, server).
    ``settings``: extra postgresql.conf parameters (e.g. ``{"fsync": "off"}``). Raises
    PostgresUnavailable when no server can be run here."""
    bindir = _find_bindir()
    run_as = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(_SERVER_USER)
        except KeyError:
            raise PostgresUnavailable(f"running as root and no '{_SERVER_USER}' system user "
                                      "to run the server as") from None
        run_as = _SERVER_USER
    base, remove_on_stop = _base_dir(os.fspath(tmpdir), run_as)
    datadir = os.path.join(base, "data")
    initdb = _run(run_as, [os.path.join(bindir, "initdb"), "-D", datadir, "-U", "postgres",
                           "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"], cwd=base)
    if initdb.returncode != 0:
        raise RuntimeError(f"initdb failed:\n{initdb.stdout}\n{initdb.stderr}")
    server = PostgresServer(bindir=bindir, datadir=datadir, socket_dir=base,
                            logfile=os.path.join(base, "server.log"), port=0, run_as=run_as,
                            dsn="", remove_on_stop=remove_on_stop)
    # A free port can be taken by someone else before the server binds it: try a few.
    for attempt in range(5):
        server.port = _free_port()
        conf = {"listen_addresses": "'127.0.0.1'", "port": str(server.port),
                "unix_socket_directories": f"'{base}'", **(settings or {})}
        # postgresql.auto.conf is read last, so these win, and a restart keeps them.
        with open(os.path.join(datadir, "postgresql.auto.conf"), "w") as f:
            f.writelines(f"{key} = {value}\n" for key, value in conf.items())
        started = _pg_ctl_start(server)
        if started.returncode == 0:
            break
        if "could not bind" not in _log_tail(server) or attempt == 4:
            raise RuntimeError(f"pg_ctl start failed:\n{started.stdout}\n{started.stderr}\n"
                               f"{_log_tail(server)}")
    server.running = True
    server.dsn = f"host=127.0.0.1 port={server.port} user=postgres dbname=postgres"
    return server.dsn, server


def _pg_ctl_stop(server: PostgresServer, mode: str) -> None:
    stopped = _run(server.run_as, [os.path.join(server.bindir, "pg_ctl"), "-D", server.datadir,
                                   "-m", mode, "-w", "-t", "60", "stop"], cwd=server.socket_dir)
    if stopped.returncode != 0:
        raise RuntimeError(f"pg_ctl stop failed:\n{stopped.stdout}\n{stopped.stderr}")
    server.running = False


def stop_postgres(server: PostgresServer, mode: str = "fast") -> None:
    """Stops the server (``mode``: fast | immediate | smart); removes its directory when it
    lies outside the caller's tmpdir."""
    if server.running:
        _pg_ctl_stop(server, mode)
    if server.remove_on_stop:
        shutil.rmtree(server.remove_on_stop, ignore_errors=True)
        server.remove_on_stop = None


def restart_postgres(server: PostgresServer, mode: str = "fast", down_s: float = 0.0) -> None:
    """Stops the server (``mode`` immediate: as a crash would), waits ``down_s`` seconds and
    starts it again on the same port and data directory. Open connections break."""
    if server.running:
        _pg_ctl_stop(server, mode)
    time.sleep(down_s)
    started = _pg_ctl_start(server)
    if started.returncode != 0:
        raise RuntimeError(f"pg_ctl start failed:\n{started.stdout}\n{started.stderr}\n"
                           f"{_log_tail(server)}")
    server.running = True


@pytest.fixture(scope="session")
def postgres_dsn(tmp_path_factory):
    """DSN of a PostgreSQL server started for the test session (skips without PostgreSQL)."""
    try:
        dsn, server = start_postgres(tmp_path_factory.mktemp("postgres"))
    except PostgresUnavailable as e:
        pytest.skip(str(e))
    try:
        yield dsn
    finally:
        stop_postgres(server)


if __name__ == "__main__":
    directory = tempfile.mkdtemp(prefix="cusense-pg-run-")
    dsn, server = start_postgres(directory)
    print(dsn, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stop_postgres(server)
        shutil.rmtree(directory, ignore_errors=True)
