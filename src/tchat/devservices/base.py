"""The frame shared by the development services: pid files, logs, readiness.

Each service runs as a plain process in its own session (so `down` can stop its
whole process group), with its data under `.tchat/<name>/`, its log in
`.tchat/logs/<name>.log` and its pid in `.tchat/run/<name>.pid`. Downloads and
builds live in CACHE_DIR, outside the clone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# absolute from the start: services run with their own data directory as working directory
CACHE_DIR = Path(os.environ.get("TCHAT_CACHE_DIR", Path.home() / ".cache" / "tchat")).absolute()
STATE_DIR = Path(os.environ.get("TCHAT_STATE_DIR", ".tchat")).absolute()


class ServiceError(Exception):
    """A service could not be installed, started or reached; the message says why."""


class Service:
    name: str = ""
    port: int = 0
    ready_timeout_s: float = 60.0

    def __init__(self, state_dir: Path = STATE_DIR) -> None:
        self.state_dir = state_dir

    # --- what each service defines ------------------------------------------------------
    def installed(self) -> bool:
        raise NotImplementedError

    def install(self) -> None:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def probe(self) -> str:
        """Return a one-line description when the service answers; raise otherwise."""
        raise NotImplementedError

    # --- shared machinery ------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.state_dir / self.name

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "run" / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "logs" / f"{self.name}.log"

    def log(self, message: str) -> None:
        print(f"[{self.name}] {message}", file=sys.stderr, flush=True)

    def pid(self) -> int | None:
        """Our pid for the service, if its process is alive."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        # A zombie left by a parent that never waited is not alive for us.
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                return None
        except OSError:
            return None
        return pid

    def answering(self) -> str | None:
        try:
            return self.probe()
        except Exception:
            return None

    def start(self) -> int:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env(),
                start_new_session=True,
                cwd=self.data_dir,
            )
        self.pid_file.write_text(str(proc.pid))
        return proc.pid

    def wait_ready(self, started_at: float) -> str:
        deadline = started_at + self.ready_timeout_s
        last_error = "no answer"
        while time.monotonic() < deadline:
            pid = self.pid()
            if pid is None:
                raise ServiceError(
                    f"{self.name} exited during start-up; see {self.log_file}:\n{self.tail_log()}"
                )
            try:
                return self.probe()
            except Exception as exc:  # the probe's own failure is the reason we report
                last_error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.5)
        raise ServiceError(
            f"{self.name} did not answer within {self.ready_timeout_s:.0f}s ({last_error}); "
            f"see {self.log_file}"
        )

    def tail_log(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop our process group; True if something of ours was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.pid() is not None:
            time.sleep(0.2)
        if self.pid() is not None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            time.sleep(0.2)
        self.pid_file.unlink(missing_ok=True)
        return True


APT_LOCK_WAIT_S = 600  # another apt/dpkg (unattended-upgrades, a second make) finishes first


def _apt_get(*args: str) -> int:
    """apt-get that waits for another apt instead of failing: DPkg::Lock::Timeout covers
    the dpkg lock; apt 2.6 does not wait for the lists or archives lock, so a lock error
    is retried (as scripts/apt-get.sh does)."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "-o", f"DPkg::Lock::Timeout={APT_LOCK_WAIT_S}", *args]
    deadline = time.monotonic() + APT_LOCK_WAIT_S
    while True:
        proc = subprocess.run(cmd, env=env, stderr=subprocess.PIPE, text=True)
        sys.stderr.write(proc.stderr)
        locked = "Could not get lock" in proc.stderr or "Unable to lock" in proc.stderr
        if proc.returncode == 0 or not locked or time.monotonic() > deadline:
            return proc.returncode
        print("[apt] another apt/dpkg holds its lock; waiting …", file=sys.stderr, flush=True)
        time.sleep(5)


def apt_install(*packages: str) -> None:
    """Install Debian packages (we run as root on dev and CI machines)."""
    if os.geteuid() != 0:
        raise ServiceError(f"need root to install {' '.join(packages)} (or install them yourself)")
    print(f"[apt] installing {' '.join(packages)} …", file=sys.stderr, flush=True)
    if _apt_get("install", "-y", "-q", *packages) != 0:
        if _apt_get("update", "-q") != 0 or _apt_get("install", "-y", "-q", *packages) != 0:
            raise ServiceError(f"apt-get could not install {' '.join(packages)}")
