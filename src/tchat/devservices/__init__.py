"""Development and CI services as plain processes: Cassandra, Redis, SeaweedFS (S3)."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass

from tchat.devservices.base import Service, ServiceError
from tchat.devservices.cassandra import CassandraService
from tchat.devservices.redis import RedisService
from tchat.devservices.seaweedfs import SeaweedService

__all__ = ["ServiceError", "ServiceStatus", "all_services", "down", "status", "up"]


def all_services() -> list[Service]:
    return [CassandraService(), RedisService(), SeaweedService()]


def select(names: list[str] | None) -> list[Service]:
    services = all_services()
    if not names:
        return services
    known = {s.name: s for s in services}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ServiceError(f"unknown service {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[n] for n in names]


@dataclass
class ServiceStatus:
    name: str
    answer: str | None  # one-line description when it answers
    pid: int | None  # our pid, if we started it
    ready_s: float | None = None  # time from start to first answer, when we started it
    error: str | None = None


def up(names: list[str] | None = None) -> list[ServiceStatus]:
    """Install what is missing, start what is not answering, wait until all answer."""
    services = select(names)
    results: dict[str, ServiceStatus] = {}

    def bring_up(service: Service) -> None:
        answer = service.answering()
        if answer is not None:
            results[service.name] = ServiceStatus(service.name, answer, service.pid())
            return
        try:
            if service.pid() is not None:  # ours but not answering yet (still starting)
                service.stop()
            service.install()
            started = time.monotonic()
            pid = service.start()
            answer = service.wait_ready(started)
            results[service.name] = ServiceStatus(
                service.name, answer, pid, ready_s=time.monotonic() - started
            )
        except Exception as exc:
            results[service.name] = ServiceStatus(service.name, None, service.pid(), error=str(exc))

    # Installs and JVM start-up overlap; each service is independent.
    threads = [threading.Thread(target=bring_up, args=(s,)) for s in services]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [results[s.name] for s in services]


def down(names: list[str] | None = None) -> list[tuple[str, bool]]:
    return [(s.name, s.stop()) for s in select(names)]


def status(names: list[str] | None = None) -> list[ServiceStatus]:
    return [ServiceStatus(s.name, s.answering(), s.pid()) for s in select(names)]


def print_statuses(rows: list[ServiceStatus]) -> None:
    for row in rows:
        if row.error:
            print(f"{row.name:10} FAILED  {row.error}", file=sys.stderr)
            continue
        owner = f"pid {row.pid}" if row.pid else "not started by tchat"
        state = row.answer or "not answering"
        took = f", ready in {row.ready_s:.1f}s" if row.ready_s is not None else ""
        print(f"{row.name:10} {state} ({owner}{took})")
