"""SFU settings come from the one Settings class (SFU_* variables)."""

from __future__ import annotations

import pytest

from tchat.config import SettingsError, load_settings
from tchat.sfu.settings import SfuSettings


def test_defaults_match_settings() -> None:
    assert SfuSettings.from_settings(load_settings()) == SfuSettings()
    assert SfuSettings().candidate_ip == "127.0.0.1"


def test_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFU_UDP_PORT", "40000")
    monkeypatch.setenv("SFU_PUBLIC_IP", "203.0.113.5")
    monkeypatch.setenv("SFU_SR_INTERVAL", "500ms")
    s = SfuSettings.from_settings(load_settings())
    assert (s.udp_port, s.candidate_ip, s.sr_interval_s) == (40000, "203.0.113.5", 0.5)


@pytest.mark.parametrize(("env", "value"), [("SFU_UDP_PORT", "x"), ("SFU_IDLE_TIMEOUT", "soon")])
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError, match=env):
        load_settings()
