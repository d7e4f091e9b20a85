"""Make sure Postgres and Redis answer at the configured addresses, starting them if we can.

Used by `make up` and `make test` before anything touches the database. Where a server does not
answer and it is installed on this machine, it is started (Postgres through Debian's
pg_ctlcluster, Redis as a project-private instance under .data/); where it is not installed, the
command stops with one line that names what to install.
"""

import glob
import os
import shutil
import subprocess
import time
from urllib.parse import urlsplit

import psycopg
import redis
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from psycopg import sql

LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1"}
START_TIMEOUT_SECONDS = 20


class Command(BaseCommand):
    help = "Check that Postgres and Redis answer; start them if they are installed but down."
    requires_system_checks = []

    def handle(self, *args, **options):
        self.ensure_postgres()
        self.ensure_database()
        self.ensure_redis()

    # Postgres ---------------------------------------------------------------------------------

    def postgres_address(self):
        db = settings.DATABASES["default"]
        return db["HOST"] or "localhost", int(db["PORT"] or 5432)

    def connect_postgres(self, dbname="postgres"):
        db = settings.DATABASES["default"]
        host, port = self.postgres_address()
        return psycopg.connect(
            dbname=dbname,
            host=host,
            port=port,
            user=db["USER"] or None,
            password=db["PASSWORD"] or None,
            connect_timeout=3,
            autocommit=True,
        )

    def postgres_answers(self):
        try:
            self.connect_postgres().close()
            return True
        except psycopg.OperationalError as error:
            # The server answered but refused us (a wrong password, a missing role): starting
            # another server would not help.
            if "Connection refused" not in str(error) and "No such file" not in str(error):
                raise CommandError(f"Postgres at DATABASE_URL refused the connection: {error}")
            return False

    def ensure_postgres(self):
        if self.postgres_answers():
            return
        host, port = self.postgres_address()
        if host not in LOCAL_HOSTS:
            raise CommandError(
                f"Postgres does not answer at {host}:{port}; start it there or fix DATABASE_URL"
            )
        clusters = sorted(glob.glob("/etc/postgresql/*/main"))
        if not shutil.which("pg_ctlcluster") or not clusters:
            raise CommandError(
                f"Postgres does not answer at {host}:{port} and is not installed here: "
                "install it (Debian: apt-get install postgresql) or set DATABASE_URL"
            )
        version = clusters[-1].split("/")[-2]
        self.stdout.write(f"Postgres does not answer at {host}:{port}; starting cluster {version}/main")
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
            check=False,
        )
        self.wait_for("Postgres", self.postgres_answers)

    def ensure_database(self):
        name = settings.DATABASES["default"]["NAME"]
        with self.connect_postgres() as connection:
            exists = connection.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [name]
            ).fetchone()
            if not exists:
                connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                self.stdout.write(f"Created database {name}")

    # Redis ------------------------------------------------------------------------------------

    def redis_answers(self):
        try:
            return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2).ping()
        except redis.exceptions.ConnectionError:
            return False

    def ensure_redis(self):
        if self.redis_answers():
            return
        address = urlsplit(settings.REDIS_URL)
        host, port = address.hostname or "127.0.0.1", address.port or 6379
        if address.scheme != "redis" or host not in LOCAL_HOSTS:
            raise CommandError(
                f"Redis does not answer at {settings.REDIS_URL}; start it there or fix REDIS_URL"
            )
        server = shutil.which("redis-server")
        if not server:
            raise CommandError(
                f"Redis does not answer at {host}:{port} and redis-server is not installed: "
                "install it (Debian: apt-get install redis-server) or set REDIS_URL"
            )
        data_dir = settings.BASE_DIR / ".data" / f"redis-{port}"
        os.makedirs(data_dir, exist_ok=True)
        self.stdout.write(
            f"Redis does not answer at {host}:{port}; starting a private instance in {data_dir}"
        )
        # Nothing is kept on disk: runs live in Postgres, Redis only carries jobs and messages.
        subprocess.run(
            [
                server, "--daemonize", "yes", "--bind", host, "--port", str(port),
                "--save", "", "--appendonly", "no", "--dir", str(data_dir),
                "--logfile", str(data_dir / "redis.log"),
                "--pidfile", str(data_dir / "redis.pid"),
            ],
            check=True,
        )
        self.wait_for("Redis", self.redis_answers)

    def wait_for(self, name, answers):
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if answers():
                self.stdout.write(f"{name} is up")
                return
            time.sleep(0.2)
        raise CommandError(f"{name} was started but did not answer within {START_TIMEOUT_SECONDS}s")
