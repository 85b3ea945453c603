"""SFU settings read from the environment until they join `tchat.config.Settings`."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SfuSettings:
    udp_host: str = "127.0.0.1"  # SFU_UDP_HOST: address the media UDP socket binds
    udp_port: int = 0  # SFU_UDP_PORT: media UDP port (0: any free port)
    public_ip: str = ""  # SFU_PUBLIC_IP: address put in ICE candidates (empty: udp_host)
    consent_timeout_s: float = 30.0  # SFU_CONSENT_TIMEOUT: drop a peer after this long without STUN
    connect_timeout_s: float = 15.0  # SFU_CONNECT_TIMEOUT: ICE+DTLS must finish within this
    idle_timeout_s: float = 30.0  # SFU_IDLE_TIMEOUT: end a publish session sending no media
    sr_interval_s: float = 1.0  # SFU_SR_INTERVAL: sender reports towards viewers
    max_peers: int = 20000  # SFU_MAX_PEERS: WHIP/WHEP sessions per worker before 503

    @property
    def candidate_ip(self) -> str:
        return self.public_ip or self.udp_host

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> SfuSettings:
        e = os.environ if env is None else env
        d = cls()
        return cls(
            udp_host=e.get("SFU_UDP_HOST", d.udp_host),
            udp_port=int(e.get("SFU_UDP_PORT", d.udp_port)),
            public_ip=e.get("SFU_PUBLIC_IP", d.public_ip),
            consent_timeout_s=float(e.get("SFU_CONSENT_TIMEOUT", d.consent_timeout_s)),
            connect_timeout_s=float(e.get("SFU_CONNECT_TIMEOUT", d.connect_timeout_s)),
            idle_timeout_s=float(e.get("SFU_IDLE_TIMEOUT", d.idle_timeout_s)),
            sr_interval_s=float(e.get("SFU_SR_INTERVAL", d.sr_interval_s)),
            max_peers=int(e.get("SFU_MAX_PEERS", d.max_peers)),
        )
