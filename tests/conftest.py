"""Fixtures shared by every test package: the real services some tests need.

``libvirtd``: a real libvirtd with the QEMU driver, yields ``qemu:///system``.
``postgres_url``: a throwaway PostgreSQL 15 cluster, yields a URL of an empty database.

Both are session-scoped and skip, saying why, only when the machine cannot provide the service.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    import pymysql
except ImportError:  # only the MariaDB tests need it; they skip without it
    pymysql = None

ROOT = Path(__file__).resolve().parent.parent
LIBVIRT_URI = "qemu:///system"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _qemu_system_answers() -> bool:
    if shutil.which("virsh") is None:
        return False
    result = subprocess.run(["virsh", "-c", LIBVIRT_URI, "version"], capture_output=True, timeout=30)
    return result.returncode == 0


def _daemon_pid(name: str) -> int | None:
    """The pid of a running libvirt daemon started with ``-d`` as root, from its pid file."""
    try:
        pid = int(Path(f"/run/{name}.pid").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


@pytest.fixture(scope="session")
def libvirtd() -> Iterator[str]:
    """A real libvirtd + virtlogd with the QEMU driver; yields the URI ``qemu:///system``.

    Uses a daemon that already answers (``scripts/test.sh`` starts one) and leaves it running;
    otherwise starts one with ``scripts/libvirtd.sh`` and stops, at the end of the session,
    the daemons it started.
    """
    if _qemu_system_answers():
        yield LIBVIRT_URI
        return
    daemons = ("libvirtd", "virtlogd")  # stop order
    running_before = {name: _daemon_pid(name) for name in daemons}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "libvirtd.sh")],
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        pytest.skip(f"libvirtd cannot start here: {result.stderr.strip() or result.stdout.strip()}")
    started = [pid for name in daemons if running_before[name] is None and (pid := _daemon_pid(name))]
    yield LIBVIRT_URI
    for pid in started:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL 15 cluster on a free loopback port, stopped and removed at the end.

    Yields ``postgresql://postgres@127.0.0.1:PORT/zstack`` (trust authentication, empty database).
    As root, the cluster runs as the ``postgres`` user (``initdb`` refuses root).
    """
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL 15 server binaries not found in {PG_BIN} (apt-get install postgresql-15)")
    as_user: list[str] = []
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
        as_user = ["runuser", "-u", "postgres", "--"]

    # Not under pytest's basetemp: that is mode 0700 and the postgres user could not enter it.
    base = Path(tempfile.mkdtemp(prefix="zstack-pg-"))
    if owner is not None:
        os.chown(base, owner.pw_uid, owner.pw_gid)
    data, log = base / "data", base / "server.log"
    port = _free_loopback_port()

    def run(*cmd: str | Path) -> None:
        result = subprocess.run([*as_user, *map(str, cmd)], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            server_log = log.read_text() if log.exists() else ""
            raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n"
                               f"{result.stdout}{result.stderr}{server_log}")

    started = False
    try:
        run(PG_BIN / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
        run(PG_BIN / "pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "-t", "60", "start")
        started = True
        run(PG_BIN / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "zstack")
        yield f"postgresql://postgres@127.0.0.1:{port}/zstack"
    finally:
        if started:
            run(PG_BIN / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


MARIADB = shutil.which("mariadbd") or "/usr/sbin/mariadbd"


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[str]:
    """A throwaway MariaDB server on a free loopback port; yields ``mysql://root@127.0.0.1:PORT``.

    Started with ``--skip-grant-tables`` (anyone on loopback may connect: it lives for one test
    session in a temporary directory), stopped and removed at the end.
    """
    if pymysql is None:
        pytest.skip("PyMySQL is not installed (pip install PyMySQL)")
    if not (Path(MARIADB).exists() and shutil.which("mariadb-install-db")):
        pytest.skip("MariaDB server not found (apt-get install mariadb-server)")
    try:
        owner = pwd.getpwnam("mysql") if os.geteuid() == 0 else None
    except KeyError:
        pytest.skip("running as root and there is no 'mysql' user to run MariaDB as")
    base = Path(tempfile.mkdtemp(prefix="zstack-mariadb-"))
    user = ["--user=mysql"] if owner else []
    if owner is not None:
        os.chown(base, owner.pw_uid, owner.pw_gid)
    data, port = base / "data", _free_loopback_port()
    install = subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={data}", *user,
                              "--auth-root-authentication-method=normal", "--skip-test-db"],
                             capture_output=True, text=True, timeout=120)
    if install.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"mariadb-install-db failed:\n{install.stdout}{install.stderr}")
    server = subprocess.Popen([MARIADB, "--no-defaults", f"--datadir={data}", *user, f"--socket={base}/sock",
                               f"--port={port}", "--bind-address=127.0.0.1", "--skip-grant-tables",
                               "--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0", "--innodb-file-per-table=0",
                               f"--log-error={base}/error.log"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                pymysql.connect(host="127.0.0.1", port=port, user="root").close()
                break
            except pymysql.err.OperationalError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log = (base / "error.log").read_text() if (base / "error.log").exists() else ""
                    raise RuntimeError(f"MariaDB did not start:\n{log}") from None
                time.sleep(0.1)
        yield f"mysql://root@127.0.0.1:{port}"
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        shutil.rmtree(base, ignore_errors=True)

