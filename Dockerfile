# HCD distillation service: one image for `hcd api`, `hcd worker` and `hcd migrate`.
# CUDA runtime base; torch brings its own CUDA libraries, the base provides the driver-facing runtime.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Python 3.11 (Ubuntu 22.04 ships 3.10): from the deadsnakes PPA.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates gnupg software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && apt-get purge -y software-properties-common && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/*

RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
# Dependencies first (a layer that survives code edits), then the code.
COPY pyproject.toml README.md ./
RUN mkdir -p hcd_core jobs hcd_cli api worker migrations \
 && touch hcd_core/__init__.py jobs/__init__.py hcd_cli/__init__.py api/__init__.py worker/__init__.py \
          migrations/__init__.py \
 && pip install --upgrade pip \
 && pip install --extra-index-url https://download.pytorch.org/whl/cu128 . \
 && pip uninstall -y hcd-service
COPY hcd_core ./hcd_core
COPY jobs ./jobs
COPY hcd_cli ./hcd_cli
COPY api ./api
COPY worker ./worker
COPY migrations ./migrations
# Editable: migrations/ (alembic.ini, versions) stays where jobs.migrate looks for it.
RUN pip install --no-deps -e . && python -c "import hcd_cli.main, api.app, worker.celery_app"

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin hcd \
 && mkdir -p /data/artifacts /data/checkpoints /data/uploads /data/datasets \
 && chown -R hcd:hcd /data
USER hcd

ENV HCD_DATA_DIR=/data \
    HCD_HOST=0.0.0.0 \
    HCD_PORT=8000
VOLUME ["/data"]
EXPOSE 8000

ENTRYPOINT ["hcd"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
