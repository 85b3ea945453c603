"""Redis from Debian's `redis-server`, as a plain process on 127.0.0.1:6379."""

from __future__ import annotations

import shutil

from tchat.devservices.base import Service, ServiceError, apt_install

PORT = 6379


class RedisService(Service):
    name = "redis"
    port = PORT
    ready_timeout_s = 20.0

    def installed(self) -> bool:
        return shutil.which("redis-server") is not None

    def install(self) -> None:
        if not self.installed():
            apt_install("redis-server")

    def command(self) -> list[str]:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceError("redis: `redis-server` not found (apt-get install redis-server)")
        return [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(PORT),
            "--dir",
            str(self.data_dir.resolve()),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
        ]

    def probe(self) -> str:
        import redis

        client = redis.Redis(
            host="127.0.0.1", port=PORT, socket_timeout=1, socket_connect_timeout=1
        )
        try:
            client.ping()
            version = client.info("server")["redis_version"]
            return f"Redis {version} on 127.0.0.1:{PORT}"
        finally:
            client.close()
