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
