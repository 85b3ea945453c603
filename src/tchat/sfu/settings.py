"""The SFU's view of its settings (`SFU_*` in `tchat.config.Settings`), for the worker.

A plain frozen dataclass so the sans-I/O worker and its tests need no pydantic.
"""

from __future__ import annotations

from dataclasses import dataclass

from tchat.config import Settings


@dataclass(frozen=True, slots=True)
class SfuSettings:
    udp_host: str = "127.0.0.1"
    udp_port: int = 0
    public_ip: str = ""
    consent_timeout_s: float = 30.0
    connect_timeout_s: float = 15.0
    idle_timeout_s: float = 30.0
    sr_interval_s: float = 1.0
    max_peers: int = 20000
    max_load: float = 0.9

    @property
    def candidate_ip(self) -> str:
        return self.public_ip or self.udp_host

    @classmethod
    def from_settings(cls, settings: Settings) -> SfuSettings:
        return cls(
            udp_host=settings.sfu_udp_host,
            udp_port=settings.sfu_udp_port,
            public_ip=settings.sfu_public_ip,
            consent_timeout_s=settings.sfu_consent_timeout,
            connect_timeout_s=settings.sfu_connect_timeout,
            idle_timeout_s=settings.sfu_idle_timeout,
            sr_interval_s=settings.sfu_sr_interval,
            max_peers=settings.sfu_max_peers,
            max_load=settings.sfu_max_load,
        )
