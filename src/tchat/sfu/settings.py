"""The SFU's view of its settings (`SFU_*` in `tchat.config.Settings`), for the worker.

A plain frozen dataclass so the sans-I/O worker and its tests need no pydantic.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

from tchat.config import Settings


def _setting(name: str) -> Any:
    """A field that is `Settings.<name>`: its default is that setting's, one place."""
    return field(default=Settings.model_fields[name].default, metadata={"setting": name})


@dataclass(frozen=True, slots=True)
class SfuSettings:
    udp_host: str = _setting("sfu_udp_host")
    udp_port: int = _setting("sfu_udp_port")
    tcp_port: int = _setting("sfu_tcp_port")
    public_ip: str = _setting("sfu_public_ip")
    consent_timeout_s: float = _setting("sfu_consent_timeout")
    connect_timeout_s: float = _setting("sfu_connect_timeout")
    idle_timeout_s: float = _setting("sfu_idle_timeout")
    publisher_grace_s: float = _setting("sfu_publisher_grace")
    sr_interval_s: float = _setting("sfu_sr_interval")
    max_peers: int = _setting("sfu_max_peers")
    max_connecting_per_identity: int = _setting("sfu_max_connecting_per_identity")
    max_connecting_per_address: int = _setting("sfu_max_connecting_per_address")
    max_handshaking: int = _setting("sfu_max_handshaking")
    join_wait_s: float = _setting("sfu_join_wait")
    publisher_reserve: float = _setting("sfu_publisher_reserve")
    max_load: float = _setting("sfu_max_load")
    # the environment's SFU_FASTPATH, as `tchat serve` would read it: in-process workers
    # (the unit tests) run on the path `make test`'s Python pass asks for
    fastpath: str = field(
        default_factory=lambda: os.environ.get("SFU_FASTPATH")
        or Settings.model_fields["sfu_fastpath"].default,
        metadata={"setting": "sfu_fastpath"},
    )
    abr: bool = _setting("sfu_abr")
    abr_up_after_s: float = _setting("sfu_abr_up_after")
    abr_hold_after_down_s: float = _setting("sfu_abr_hold_after_down")
    abr_headroom: float = _setting("sfu_abr_headroom")
    abr_initial_bps: float = _setting("sfu_abr_initial_bps")
    abr_probe_interval_s: float = _setting("sfu_abr_probe_interval")
    abr_probe_max_bps: float = _setting("sfu_abr_probe_max_bps")

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
        return cls(**{f.name: getattr(settings, f.metadata["setting"]) for f in fields(cls)})
