# HCD distillation service: one image for `hcd api`, `hcd worker` and `hcd migrate`.
#
# CUDA: torch comes from PyPI (torch==2.14.1, the pin of pyproject.toml). That wheel is a CUDA 13.0 build
# (torch.version.cuda "13.0"; it requires cuda-toolkit==13.0.3 and nvidia-*-cu13 wheels, which pip installs
# with it: the CUDA runtime, cuBLAS, cuDNN, NCCL, ...). The image therefore needs no CUDA of its own: a slim
# Python base, and the host's NVIDIA driver (libcuda, nvidia-smi) mounted by the NVIDIA Container Toolkit.
# Host driver: 580 or newer (NVIDIA's minimum for CUDA 13.x). Held against pyproject.toml and the installed
# torch by tests/service/test_deploy_files.py.
FROM python:3.11-slim-bookworm

# APP_UID/APP_GID: the user the image runs as (owner of /data); a remote worker's mount must be writable
# by it (`docker build --build-arg APP_UID=$(id -u) --build-arg APP_GID=$(id -g) .` to match a host user).
ARG APP_UID=10001
ARG APP_GID=10001

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_REQUIRE_CUDA="cuda>=13.0"

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
# torch and torchvision first, in a layer of their own (with the CUDA 13.0 libraries, several GB) that
# survives edits of the other dependencies; from PyPI, no extra index. Same pins as pyproject.toml.
RUN pip install --upgrade pip \
 && pip install torch==2.14.1 torchvision==0.29.1
# The other dependencies (a layer that survives code edits), then the code.
COPY pyproject.toml README.md ./
RUN mkdir -p hcd_core jobs hcd_cli api worker migrations \
 && touch hcd_core/__init__.py jobs/__init__.py hcd_cli/__init__.py api/__init__.py worker/__init__.py \
          migrations/__init__.py \
 && pip install . \
 && pip uninstall -y hcd-service
COPY hcd_core ./hcd_core
COPY jobs ./jobs
COPY hcd_cli ./hcd_cli
COPY api ./api
COPY worker ./worker
COPY migrations ./migrations
# Editable: migrations/ (alembic.ini, versions) stays where jobs.migrate looks for it.
RUN pip install --no-deps -e . && python -c "import hcd_cli.main, api.app, worker.celery_app"

RUN (getent group "$APP_GID" >/dev/null || groupadd --gid "$APP_GID" hcd) \
 && useradd --create-home --uid "$APP_UID" --gid "$APP_GID" --shell /usr/sbin/nologin hcd \
 && mkdir -p /data/artifacts /data/checkpoints /data/uploads /data/datasets \
 && chown -R "$APP_UID:$APP_GID" /data
USER hcd

# No VOLUME: every container that does not mount /data would get an anonymous volume (one per `migrate`
# run); compose mounts the `artifacts` volume at /data on the API and the workers.
ENV HCD_DATA_DIR=/data \
    HCD_HOST=0.0.0.0 \
    HCD_PORT=8000
EXPOSE 8000

ENTRYPOINT ["hcd"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
