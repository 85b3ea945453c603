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
    max_connecting_per_identity: int = 4
    max_connecting_per_address: int = 16
    publisher_reserve: float = 0.05
    max_load: float = 0.9
    abr: bool = True
    abr_up_after_s: float = 5.0
    abr_hold_after_down_s: float = 10.0
    abr_headroom: float = 1.2
    abr_initial_bps: float = 1_000_000.0
    abr_probe_interval_s: float = 3.0
    abr_probe_max_bps: float = 4_000_000.0

    @property
    def candidate_ip(self) -> str:
        return self.public_ip or self.udp_host

    @property
    def max_viewers(self) -> int:
        """Sessions at which viewers are refused: the rest is kept for publishers."""
        reserve = (
            max(1, round(self.max_peers * self.publisher_reserve)) if self.publisher_reserve else 0
        )
        return max(1, self.max_peers - reserve)

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
            max_connecting_per_identity=settings.sfu_max_connecting_per_identity,
            max_connecting_per_address=settings.sfu_max_connecting_per_address,
            publisher_reserve=settings.sfu_publisher_reserve,
            max_load=settings.sfu_max_load,
            abr=settings.sfu_abr,
            abr_up_after_s=settings.sfu_abr_up_after,
            abr_hold_after_down_s=settings.sfu_abr_hold_after_down,
            abr_headroom=settings.sfu_abr_headroom,
            abr_initial_bps=settings.sfu_abr_initial_bps,
            abr_probe_interval_s=settings.sfu_abr_probe_interval,
            abr_probe_max_bps=settings.sfu_abr_probe_max_bps,
        )
