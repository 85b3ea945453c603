from pathlib import Path

import pytest

from tchat.config import (
    Settings,
    SettingsError,
    configuration_markdown,
    load_settings,
    parse_duration,
    parse_host_port,
)


def test_defaults_are_embedded() -> None:
    s = load_settings()
    assert s.chat_store == "sqlite"
    assert s.storage == "local"
    assert s.port == 8080 and s.host == "127.0.0.1"
    assert s.scylladb_keyspace == "tchat"


@pytest.mark.parametrize(
    ("env", "value", "needle"),
    [
        ("LOG_LEVEL", "loud", "LOG_LEVEL='loud'"),
        ("NUM_WRITERS", "-3", "NUM_WRITERS='-3'"),
        ("SCYLLADB_HOST", "localhost:notaport", "SCYLLADB_HOST"),
        ("SCYLLADB_HOST", "localhost:99999", "out of range"),
        ("MAX_CONNECTION_TIME", "soon", "MAX_CONNECTION_TIME"),
        ("TCHAT_PORT", "0", "TCHAT_PORT"),
        ("CHAT_STORE", "mongo", "CHAT_STORE"),
    ],
)
def test_bad_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, needle: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    message = str(err.value)
    assert needle in message
    assert "\n" not in message


def test_guide_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCYLLADB_HOST", "db1:9043,db2")
    monkeypatch.setenv("MAX_CONNECTION_TIME", "5s")
    monkeypatch.setenv("log_level", "WARNING")
    s = load_settings()
    assert s.cql_contact_points() == [("db1", 9043), ("db2", 9042)]
    assert s.max_connection_time == 5.0
    assert s.log_level == "warn"


def test_durations() -> None:
    assert parse_duration("500ms") == 0.5
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration(7) == 7.0
    with pytest.raises(ValueError):
        parse_duration("5 parsecs")


def test_host_port() -> None:
    assert parse_host_port("[::1]:9042", 1) == ("::1", 9042)
    assert parse_host_port("h", 9042) == ("h", 9042)
    with pytest.raises(ValueError):
        parse_host_port("a b", 9042)


def test_secret_is_generated_once(tmp_path: Path) -> None:
    s = Settings(TCHAT_DATA_DIR=tmp_path)  # type: ignore[call-arg]
    first = s.token_secret()
    assert len(first) > 30
    assert s.token_secret() == first
    assert (tmp_path / "secret").stat().st_mode & 0o077 == 0


def test_configuration_doc_matches_code() -> None:
    doc = Path(__file__).parents[2] / "docs" / "configuration.md"
    assert doc.read_text() == configuration_markdown(), (
        "docs/configuration.md is stale: run `tchat config --markdown > docs/configuration.md`"
    )


@pytest.mark.parametrize(
    "secret,why",
    [
        ("x", "has 1 bytes"),
        ("s" * 64, "looks weak"),
        ("password" * 4, "looks weak"),
    ],
)
def test_weak_secrets_refused_without_echoing_them(secret: str, why: str) -> None:
    """Issue 14.8: TCHAT_SECRET needs ≥ 32 bytes and a plausible entropy estimate; the
    error names the variable but never prints the value."""
    with pytest.raises(SettingsError) as err:
        load_settings(TCHAT_SECRET=secret)
    assert "TCHAT_SECRET" in str(err.value) and why in str(err.value)
    assert secret not in str(err.value)


def test_strong_secrets_accepted(tmp_path: Path) -> None:
    import secrets

    for value in (
        secrets.token_urlsafe(32),
        secrets.token_hex(32),
        "integration-secret-0123456789abcdef",
    ):
        assert load_settings(TCHAT_SECRET=value).token_secret() == value
    generated = load_settings(TCHAT_DATA_DIR=str(tmp_path / "d")).token_secret()
    assert len(generated) >= 43  # 32 random bytes, base64url
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "d" / "secret").stat().st_mode & 0o777 == 0o600


def test_paths_are_resolved_once_against_the_starting_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FFmpeg runs in its recording's directory and SFU instances are separate processes:
    a relative TCHAT_DATA_DIR (the default) or FFMPEG path must not mean something else
    there (issue 12: `make run` recorded nothing)."""
    monkeypatch.chdir(tmp_path)
    for env in ("TCHAT_DATA_DIR", "FFMPEG"):
        monkeypatch.delenv(env, raising=False)
    s = load_settings()
    assert s.data_dir == tmp_path / ".tchat" / "data"
    assert s.ffmpeg == "ffmpeg"  # a bare name is looked up on PATH wherever it runs
    s = load_settings(TCHAT_DATA_DIR="rel/data", FFMPEG="bin/ffmpeg")
    assert s.data_dir == tmp_path / "rel" / "data"
    assert s.ffmpeg == str(tmp_path / "bin" / "ffmpeg")
    monkeypatch.chdir("/")
    assert s.data_dir == tmp_path / "rel" / "data"  # resolved once, not on each use
    assert load_settings(TCHAT_DATA_DIR="/abs/data").data_dir == Path("/abs/data")
