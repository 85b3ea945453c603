"""Files for users beyond Python: compose file, guide scripts, workflow, README commands."""

from pathlib import Path

import yaml

from tchat.config import Settings

ROOT = Path(__file__).parents[2]


def test_compose_file_parses_and_uses_real_settings() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"scylla", "redis", "minio", "tchat"} <= set(services)
    assert services["scylla"]["container_name"] == "tchat-scylla-performance"
    known = {f.alias for f in Settings.model_fields.values()}
    assert set(services["tchat"]["environment"]) <= known


def test_compose_engines_on_the_compose_network_with_credentials_from_env() -> None:
    """Issue 14.11: no engine publishes a port (Redis, ScyllaDB, MinIO are reachable from the
    compose network only), credentials are required from the environment, Redis asks for
    AUTH and tchat gives it in REDIS_URL; the host override publishes on loopback only."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in ("scylla", "redis", "minio"):
        assert "ports" not in services[name], name
    assert services["tchat"]["ports"] == ["8080:8080"]
    minio = services["minio"]["environment"]
    assert minio["MINIO_ROOT_USER"].startswith("${S3_ACCESS_KEY:?")
    assert minio["MINIO_ROOT_PASSWORD"].startswith("${S3_SECRET_KEY:?")
    assert "--requirepass" in services["redis"]["command"]
    env = services["tchat"]["environment"]
    assert env["REDIS_URL"] == "redis://:${REDIS_PASSWORD}@redis:6379/0"
    assert env["TCHAT_SECRET"].startswith("${TCHAT_SECRET:?")
    assert env["S3_SECRET_KEY"] == "${S3_SECRET_KEY}"
    host = yaml.safe_load((ROOT / "docker-compose.host.yml").read_text())["services"]
    for name, svc in host.items():
        assert all(p.startswith("127.0.0.1:") for p in svc["ports"]), name


def test_readme_starts_with_run_and_test() -> None:
    head = "\n".join((ROOT / "README.md").read_text().splitlines()[:15])
    assert "make run" in head and "make test" in head


def test_workflow_runs_ci_script() -> None:
    workflow = yaml.safe_load((ROOT / ".github/workflows/performance.yml").read_text())
    steps = workflow["jobs"]["performance"]["steps"]
    assert any(".ci/run" in step.get("run", "") for step in steps)


def test_guide_scripts_exist_and_are_executable() -> None:
    for name in ("setup-compose.sh", "setup-scylladb.sh"):
        path = ROOT / "tests" / "performance" / name
        assert path.stat().st_mode & 0o111, name
