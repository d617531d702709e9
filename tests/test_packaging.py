"""The deployment files parse and say what the README promises."""

from __future__ import annotations

import tomllib

import yaml

from tests.conftest import REPO_ROOT


def test_compose_file_is_valid_and_complete():
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    db, app = compose["services"]["db"], compose["services"]["app"]
    assert db["image"].startswith("pgvector/pgvector:pg1")
    assert int(db["image"].split(":pg")[1]) >= 17
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    volume_name = db["volumes"][0].split(":")[0]
    assert volume_name in compose["volumes"]
    assert app["build"]["dockerfile"] == "Dockerfile"
    assert (REPO_ROOT / app["build"]["dockerfile"]).is_file()
    assert app["depends_on"]["db"]["condition"] == "service_healthy"
    assert app["environment"]["DATABASE_URL"].startswith("postgresql://")
    assert app["command"][:2] == ["ragtune", "serve"]


def test_pyproject_pins_torch_and_declares_the_command():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert "torch==2.13.0" in project["dependencies"]
    assert project["scripts"]["ragtune"] == "bot.cli:main"
    assert project["requires-python"].startswith(">=3.11")


def test_ci_runs_the_readme_test_command():
    readme = (REPO_ROOT / "README.md").read_text()
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    test_command = ".venv/bin/python -m pytest"
    assert test_command in readme
    assert ci.strip().splitlines()[-1] == test_command
