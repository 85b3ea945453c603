"""SFU settings: from `tchat.config.Settings` once it has the `sfu_*` fields, else the env.

Same names and defaults as the fields proposed for `Settings` (see docs/sfu.md), so
moving them there changes nothing for users.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

from tchat.config import parse_duration


@dataclass(frozen=True, slots=True)
class SfuSettings:
    udp_host: str = "127.0.0.1"  # SFU_UDP_HOST: address the media UDP socket binds
    udp_port: int = 0  # SFU_UDP_PORT: media UDP port for all peers (0: any free port)
    public_ip: str = ""  # SFU_PUBLIC_IP: address put in ICE candidates (empty: udp_host)
    consent_timeout_s: float = 30.0  # SFU_CONSENT_TIMEOUT: end a session without STUN this long
    connect_timeout_s: float = 15.0  # SFU_CONNECT_TIMEOUT: ICE+DTLS must finish within this
    idle_timeout_s: float = 30.0  # SFU_IDLE_TIMEOUT: end a publish session sending no media
    sr_interval_s: float = 1.0  # SFU_SR_INTERVAL: sender reports towards viewers
    max_peers: int = 20000  # SFU_MAX_PEERS: WHIP/WHEP sessions per worker before 503
    max_load: float = 0.9  # SFU_MAX_LOAD: refuse new sessions (503) above this CPU, in cores

    @property
    def candidate_ip(self) -> str:
        return self.public_ip or self.udp_host

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SfuSettings:
        """Raises ValueError naming the variable when a value is bad."""
        e = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            name = _ENV[f.name]
            raw = e.get(name)
            if raw is None:
                continue
            try:
                if f.name.endswith("_s"):
                    values[f.name] = parse_duration(raw)
                elif f.type == "int":
                    values[f.name] = int(raw)
                elif f.type == "float":
                    values[f.name] = float(raw)
                else:
                    values[f.name] = raw
            except ValueError as exc:
                raise ValueError(f"invalid setting {name}={raw!r}: {exc}") from None
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def from_settings(cls, settings: object) -> SfuSettings:
        """Prefer `settings.sfu_*` attributes when the Settings class has them."""
        base = cls.from_env()
        values = {}
        for f in fields(cls):
            attr = "sfu_" + f.name.removesuffix("_s")
            if hasattr(settings, attr):
                values[f.name] = getattr(settings, attr)
        return cls(**{**{f.name: getattr(base, f.name) for f in fields(cls)}, **values})


_ENV = {
    "udp_host": "SFU_UDP_HOST",
    "udp_port": "SFU_UDP_PORT",
    "public_ip": "SFU_PUBLIC_IP",
    "consent_timeout_s": "SFU_CONSENT_TIMEOUT",
    "connect_timeout_s": "SFU_CONNECT_TIMEOUT",
    "idle_timeout_s": "SFU_IDLE_TIMEOUT",
    "sr_interval_s": "SFU_SR_INTERVAL",
    "max_peers": "SFU_MAX_PEERS",
    "max_load": "SFU_MAX_LOAD",
}
