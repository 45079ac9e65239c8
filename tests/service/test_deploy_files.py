"""Dockerfile and docker-compose.yml held against the code (no Docker engine needed)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from hcd_cli.main import build_parser
from jobs.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
IMAGE_SERVICES = ("migrate", "api", "worker")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def _instr(dockerfile, name: str) -> list[str]:
    return [args for word, args in dockerfile if word == name]


def _env(service: dict) -> dict:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return env


def test_every_hcd_command_in_compose_parses_with_the_real_cli(compose, dockerfile):
    parser = build_parser()
    for name in IMAGE_SERVICES:
        command = compose["services"][name]["command"]
        args = parser.parse_args(command)  # SystemExit on an unknown subcommand or option
        assert callable(args.func), name
    default_cmd = yaml.safe_load(_instr(dockerfile, "CMD")[-1])
    assert yaml.safe_load(_instr(dockerfile, "ENTRYPOINT")[-1]) == ["hcd"]
    parser.parse_args(default_cmd)


def test_every_hcd_env_var_is_a_settings_field(compose, dockerfile):
    fields = set(Settings.model_fields)
    seen = set()
    for service in compose["services"].values():
        for key in _env(service):
            if key.startswith("HCD_"):
                assert key[4:].lower() in fields, f"{key} is not a Settings field"
                seen.add(key)
    for args in _instr(dockerfile, "ENV"):
        for key in re.findall(r"(HCD_[A-Z_]+)=", args):
            assert key[4:].lower() in fields, f"Dockerfile {key} is not a Settings field"
    assert {"HCD_DATABASE_URL", "HCD_REDIS_URL", "HCD_DATA_DIR", "HCD_BOOTSTRAP_API_KEY"} <= seen
    for name in IMAGE_SERVICES:
        env = _env(compose["services"][name])
        assert "@postgres:5432/" in env["HCD_DATABASE_URL"] and env["HCD_REDIS_URL"].startswith("redis://redis:")


def test_ports_match_between_command_compose_and_dockerfile(compose, dockerfile):
    api = compose["services"]["api"]
    args = build_parser().parse_args(api["command"])
    exposed = {int(p) for args_ in _instr(dockerfile, "EXPOSE") for p in args_.split()}
    published = {int(str(p).split(":")[-1]) for p in api["ports"]}
    assert args.port in exposed and published == {args.port} and args.host == "0.0.0.0"


def test_api_and_worker_share_the_artifact_volume_at_the_data_dir(compose):
    mounts = {}
    for name in ("api", "worker"):
        service = compose["services"][name]
        data_dir = _env(service)["HCD_DATA_DIR"]
        volumes = [v.split(":") for v in service["volumes"]]
        mounts[name] = {src for src, dst, *_ in volumes if dst == data_dir}
        assert mounts[name], f"{name} mounts nothing at {data_dir}"
    shared = mounts["api"] & mounts["worker"]
    assert shared and shared <= set(compose["volumes"]), mounts


def test_backing_services_have_healthchecks_and_volumes(compose):
    services = compose["services"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "ping" in services["redis"]["healthcheck"]["test"]
    assert "--appendonly" in services["redis"]["command"]
    for name in ("postgres", "redis"):
        assert services[name]["volumes"], name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_worker_reserves_one_gpu(compose):
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    args = build_parser().parse_args(compose["services"]["worker"]["command"])
    assert args.device in (None, "cuda") and _env(compose["services"]["worker"]).get("HCD_WORKER_DEVICE") == "cuda"


def test_dockerfile_cuda_base_non_root_user_and_copied_sources(dockerfile):
    base = _instr(dockerfile, "FROM")[0]
    assert "cuda" in base and "runtime" in base
    users = _instr(dockerfile, "USER")
    assert users and users[-1] not in ("root", "0")
    assert "HCD_DATA_DIR=/data" in " ".join(_instr(dockerfile, "ENV"))
    ignored = (ROOT / ".dockerignore").read_text().split()
    for args in _instr(dockerfile, "COPY"):
        *sources, _dest = shlex.split(args)
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: missing from the repository"
            assert src not in ignored, f"COPY {src}: excluded by .dockerignore"
