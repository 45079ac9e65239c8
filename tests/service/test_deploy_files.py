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


def test_api_and_worker_use_the_minio_bucket_created_at_start(compose):
    """The object store: MinIO, its bucket made by a one-shot `mc`, and the store settings of api and worker."""
    services = compose["services"]
    minio, init = services["minio"], services["minio-init"]
    assert minio["image"].startswith("minio/minio") and "mc ready" in " ".join(minio["healthcheck"]["test"])
    assert minio["command"][:2] == ["server", "/data"] and any(v.endswith(":/data") for v in minio["volumes"])
    assert init["image"].startswith("minio/mc") and init["restart"] == "no"
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    script = " ".join(init["command"])
    creds = {k: _env(minio)[k] for k in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD")}
    assert {k: _env(init)[k] for k in creds} == creds
    for name in ("api", "worker"):
        service = services[name]
        env = _env(service)
        settings = Settings(storage_url=env["HCD_STORAGE_URL"], _env_file=None)  # a valid s3:// URL
        bucket = settings.storage_url.removeprefix("s3://").split("/")[0]
        assert f"mc mb --ignore-existing store/{bucket}" in script, f"{name}: nothing creates bucket {bucket!r}"
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000" and "http://minio:9000" in script
        assert "--address" in minio["command"] and minio["command"][minio["command"].index("--address") + 1] == ":9000"
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (creds["MINIO_ROOT_USER"],
                                                                          creds["MINIO_ROOT_PASSWORD"])
        assert env["AWS_DEFAULT_REGION"] and env["HCD_STORAGE_PUBLIC_ENDPOINT_URL"]
        assert service["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    published = {int(str(p).split(":")[-1]) for p in minio["ports"]}
    public = services["api"]["environment"]["HCD_STORAGE_PUBLIC_ENDPOINT_URL"]
    assert 9000 in published and public.rstrip("}").endswith(":9000")  # presigned URLs reach minio's port
    assert "miniodata" in compose["volumes"]


def test_worker_reserves_one_gpu(compose):
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    args = build_parser().parse_args(compose["services"]["worker"]["command"])
    assert args.device in (None, "cuda") and _env(compose["services"]["worker"]).get("HCD_WORKER_DEVICE") == "cuda"


def test_dockerfile_non_root_user_and_copied_sources(dockerfile):
    users = _instr(dockerfile, "USER")
    assert users and users[-1] not in ("root", "0")
    assert "HCD_DATA_DIR=/data" in " ".join(_instr(dockerfile, "ENV"))
    ignored = (ROOT / ".dockerignore").read_text().split()
    for args in _instr(dockerfile, "COPY"):
        *sources, _dest = shlex.split(args)
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: missing from the repository"
            assert src not in ignored, f"COPY {src}: excluded by .dockerignore"


# --------------------------------------------------------------------------- Docker on a GPU host
# torch's PyPI wheel -> the CUDA version it is built for, read from the wheel's METADATA (`pip download
# torch==2.14.1 --no-deps`: Requires-Dist cuda-toolkit[...]==13.0.3 and nvidia-*-cu13; torch/version.py
# cuda = '13.0'). Bumping the pin means verifying the new wheel the same way and adding it here.
PYPI_TORCH_CUDA = {"2.14.1": "13.0"}
HCD_IMAGE_DEFAULT = "hcd-service:latest"


def _pyproject_pins() -> dict[str, str]:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for dep in project["dependencies"]:
        name, sep, version = dep.partition("==")
        if sep:
            pins[name.strip().lower()] = version.strip()
    return pins


def _dockerfile_env(dockerfile) -> dict[str, str]:
    env = {}
    for args in _instr(dockerfile, "ENV"):
        for token in shlex.split(args):
            key, sep, value = token.partition("=")
            if sep:
                env[key] = value
    return env


def _torch_cuda() -> str:
    pin = _pyproject_pins()["torch"]
    assert pin in PYPI_TORCH_CUDA, (f"torch=={pin}: which CUDA is its PyPI wheel built for? Read its METADATA "
                                    f"(pip download torch=={pin} --no-deps) and add it to PYPI_TORCH_CUDA")
    return PYPI_TORCH_CUDA[pin]


def _deployment_section() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Deployment")
    end = readme.find("\n## ", start + 1)
    return readme[start:end if end > 0 else None]


def test_dockerfile_installs_the_torch_and_torchvision_of_pyproject(dockerfile):
    pins = _pyproject_pins()
    runs = " ".join(_instr(dockerfile, "RUN"))
    for name in ("torch", "torchvision"):
        found = set(re.findall(rf"(?<![\w-]){name}==([\w.+]+)", runs))
        assert found == {pins[name]}, f"Dockerfile installs {name} {found or 'unpinned'}, pyproject pins {pins[name]}"


def test_installed_torch_is_the_pypi_wheel_whose_cuda_the_image_assumes():
    """Cross-check PYPI_TORCH_CUDA with the wheel in this environment when it is that PyPI wheel."""
    import importlib.metadata

    pin = _pyproject_pins()["torch"]
    dist = importlib.metadata.distribution("torch")
    if dist.version != pin:
        pytest.skip(f"this environment has torch {dist.version}, pyproject pins {pin}")
    requires = dist.requires or []
    toolkit = [re.search(r"==(\d+)\.(\d+)", r) for r in requires if r.startswith("cuda-toolkit")]
    if not toolkit:
        pytest.skip("this environment's torch is not the PyPI CUDA wheel (no cuda-toolkit requirement)")
    cuda = _torch_cuda()
    major, minor = toolkit[0].groups()  # type: ignore[union-attr]
    assert f"{major}.{minor}" == cuda
    nvidia = [r.split("==")[0] for r in requires if r.startswith("nvidia-") and "-cu" in r]
    assert nvidia and all(name.endswith(f"-cu{major}") for name in nvidia), nvidia
    version_py = Path(str(dist.locate_file("torch/version.py"))).read_text()
    assert re.search(rf"^cuda\b.*=\s*'{re.escape(cuda)}'", version_py, re.M), "torch/version.py says another CUDA"


def test_image_base_and_indexes_match_the_cuda_of_the_torch_wheel(dockerfile):
    from packaging.specifiers import SpecifierSet

    cuda = _torch_cuda()
    base = _instr(dockerfile, "FROM")[0].split()[0]
    if base.startswith("nvidia/cuda:"):
        assert re.match(rf"nvidia/cuda:{re.escape(cuda)}\.", base), f"{base}: torch's wheel is built for CUDA {cuda}"
    else:
        match = re.fullmatch(r"python:(\d+\.\d+)(?:\.\d+)?-slim(?:-\w+)?", base)
        assert match, f"FROM {base}: a python:X.Y-slim base (the wheel brings CUDA) or nvidia/cuda:{cuda}.*"
        import tomllib

        requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
        assert match.group(1) + ".0" in SpecifierSet(requires), f"{base} vs requires-python {requires}"
    # No index of another CUDA build (pip would silently fall back to the PyPI wheel for a missing version).
    text = " ".join(args for word, args in dockerfile if word in ("RUN", "ENV", "ARG"))
    for build in re.findall(r"download\.pytorch\.org/whl/(\w+)", text):
        assert build == "cu" + cuda.replace(".", ""), f"index for {build}, torch's wheel is CUDA {cuda}"
    env = _dockerfile_env(dockerfile)
    assert env.get("NVIDIA_REQUIRE_CUDA") == f"cuda>={cuda}"
    assert {"compute", "utility"} <= set(env.get("NVIDIA_DRIVER_CAPABILITIES", "").split(","))


def test_readme_documents_the_minimum_driver_of_that_cuda():
    from worker.device_check import min_driver

    cuda = _torch_cuda()
    driver = min_driver(cuda)
    assert driver is not None, f"worker.device_check knows no minimum driver for CUDA {cuda}"
    section = _deployment_section()
    assert f"Minimum driver: NVIDIA {driver}" in section
    assert f"driver {driver} or newer" in section  # the remote-worker paragraph
    assert f"CUDA {cuda}" in section and f"cuda>={cuda}" in section
    mentioned = set(re.findall(r"CUDA (\d+\.\d+)", section))
    assert mentioned == {cuda}, f"the Deployment section names CUDA {mentioned}, the image runs CUDA {cuda}"


def _bytes(size: object) -> int:
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmg]?)b?", str(size).strip().lower())
    assert match, f"shm_size {size!r}"
    return int(float(match.group(1)) * 1024 ** " kmg".index(match.group(2) or " "))


def test_worker_has_shared_memory_for_dataloader_workers(compose):
    worker = compose["services"]["worker"]
    assert worker.get("ipc") == "host" or _bytes(worker.get("shm_size", 0)) >= 1024**3, \
        "the worker needs shm_size (>= 1 GB) or ipc: host: DataLoader workers pass batches in /dev/shm"
    remote = _deployment_section().split("#### A worker on another host", 1)[1]
    assert re.search(r"--shm-size \d+[gG]|--ipc[ =]host", remote), "the remote worker's docker run needs shm too"


def test_migrate_api_and_worker_build_and_pull_one_image(compose):
    services = compose["services"]
    images = {services[name]["image"] for name in IMAGE_SERVICES}
    assert len(images) == 1, images
    image = images.pop()
    match = re.fullmatch(r"\$\{HCD_IMAGE:-([^}]+)\}", image)
    assert match and match.group(1) == HCD_IMAGE_DEFAULT, image
    for name, service in services.items():
        build = service.get("build")
        if name in IMAGE_SERVICES:
            assert build is not None, f"{name} has no build: `docker compose build` would not build its image"
        if build is not None:
            context = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            assert (ROOT / context / dockerfile).is_file(), name
            assert service.get("image") == image, f"{name} builds the Dockerfile under another image name"
    assert "HCD_IMAGE=" in _deployment_section()


def test_no_anonymous_volume_wherever_the_image_runs(compose, dockerfile):
    declared: list[str] = []
    for args in _instr(dockerfile, "VOLUME"):
        declared += yaml.safe_load(args) if args.startswith("[") else args.split()
    image = compose["services"]["api"]["image"]
    for name, service in compose["services"].items():
        if service.get("image") != image:
            continue
        targets = {str(v).split(":")[1] if ":" in str(v) else str(v) for v in service.get("volumes", [])}
        for path in declared:
            assert path in targets, f"VOLUME {path}: `{name}` gets a new anonymous volume on every run"


def test_image_user_and_its_mount_ownership_are_documented(dockerfile):
    args = dict(a.split("=", 1) for a in _instr(dockerfile, "ARG") if "=" in a)
    uid, gid = args["APP_UID"], args["APP_GID"]
    runs = " ".join(_instr(dockerfile, "RUN"))
    assert '--uid "$APP_UID"' in runs and '--gid "$APP_GID"' in runs
    assert _instr(dockerfile, "USER")[-1] == "hcd"
    section = _deployment_section()
    assert f"uid and gid {uid}" in section if uid == gid else f"uid {uid}" in section
    assert f"chown -R {uid}:{gid} " in section, "the remote worker's mount must be writable by the image's user"
    assert "--user" in section and "--build-arg APP_UID=" in section
