"""SFU settings from the environment, and from Settings once it has `sfu_*` fields."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tchat.sfu.settings import SfuSettings


def test_defaults_and_env() -> None:
    assert SfuSettings.from_env({}) == SfuSettings()
    s = SfuSettings.from_env(
        {"SFU_UDP_PORT": "40000", "SFU_PUBLIC_IP": "203.0.113.5", "SFU_SR_INTERVAL": "500ms"}
    )
    assert (s.udp_port, s.candidate_ip, s.sr_interval_s) == (40000, "203.0.113.5", 0.5)
    assert SfuSettings().candidate_ip == "127.0.0.1"


@pytest.mark.parametrize(("env", "name"), [("SFU_UDP_PORT", "x"), ("SFU_IDLE_TIMEOUT", "soon")])
def test_bad_values_name_the_variable(env: str, name: str) -> None:
    with pytest.raises(ValueError, match=env):
        SfuSettings.from_env({env: name})


def test_settings_fields_win_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFU_UDP_PORT", "1111")
    settings = SimpleNamespace(sfu_udp_port=2222, sfu_consent_timeout=12.0)
    s = SfuSettings.from_settings(settings)
    assert (s.udp_port, s.consent_timeout_s) == (2222, 12.0)
    assert SfuSettings.from_settings(object()).udp_port == 1111
