"""A real MariaDB server in the backend namespace, with its own data directory.

The data directory is created once per lab run with `mariadb-install-db`
(about half a second) and a small InnoDB, so the server is ready in a second
or two. `--skip-name-resolve` matters: the lab has no DNS, and a reverse
lookup per connection would stall every connect.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from rsttrace.lab.netns import LabError, run

USER = "lab"
PASSWORD = "lab"
DATABASE = "mysql"


@dataclass
class MariaDB:
    ns: str
    addr: str        # the address to listen on, or several separated by commas
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def datadir(self) -> Path:
        return self.workdir / "data"

    def install(self) -> None:
        for tool in ("mariadb-install-db", "mariadbd"):
            if not shutil.which(tool) and not Path("/usr/sbin", tool).exists():
                raise LabError(f"{tool} not found: run `make install` (installs mariadb-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        run(["mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}", "--user=root",
             "--auth-root-authentication-method=normal", "--skip-test-db",
             "--innodb-log-file-size=8M"], timeout=60)
        (self.workdir / "init.sql").write_text(
            f"CREATE USER IF NOT EXISTS '{USER}'@'%' IDENTIFIED BY '{PASSWORD}';\n"
            f"GRANT ALL ON *.* TO '{USER}'@'%';\n")

    def start(self, timeout_s: float = 30.0) -> None:
        w = self.workdir
        cmd = ["ip", "netns", "exec", self.ns, "/usr/sbin/mariadbd", "--no-defaults",
               f"--datadir={self.datadir}", f"--socket={w / 'mysqld.sock'}",
               f"--pid-file={w / 'mysqld.pid'}", f"--log-error={w / 'error.log'}",
               f"--init-file={w / 'init.sql'}", "--user=root",
               f"--bind-address={self.addr}", f"--port={self.port}",
               "--skip-name-resolve", "--skip-log-bin", "--performance-schema=OFF",
               "--innodb-buffer-pool-size=16M", "--innodb-log-file-size=8M",
               "--max-connections=200"]
        # Its own session: Ctrl-C on the demo must not reach the server before
        # the lab's teardown stops it in order.
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LabError(f"mariadbd exited with {self.proc.returncode}: see {w / 'error.log'}")
            if self._ready():
                return
            time.sleep(0.1)
        raise LabError(f"mariadbd not ready after {timeout_s:.0f} s: see {w / 'error.log'}")

    def _ready(self) -> bool:
        # The server listens only inside its namespace; its unix socket (same
        # file system) says it finished start-up, init file included.
        sock = self.workdir / "mysqld.sock"
        if not sock.exists():
            return False
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(0.5)
        try:
            s.connect(str(sock))
            return bool(s.recv(4))  # the server greeting
        except OSError:
            return False
        finally:
            s.close()

    def query(self, sql: str) -> tuple:
        """Run one statement as root over the server's unix socket (the
        lab process is outside the server's namespace, but shares its file
        system); returns the rows."""
        import pymysql
        conn = pymysql.connect(unix_socket=str(self.workdir / "mysqld.sock"), user="root",
                               connect_timeout=5)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchall()
        finally:
            conn.close()

    def global_variable(self, name: str) -> str:
        rows = self.query(f"SHOW GLOBAL VARIABLES LIKE '{name}'")
        return str(rows[0][1])

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
