# syntax=docker/dockerfile:1
# tlpipe pipeline image. One Dockerfile, two variants:
#   docker build --build-arg VARIANT=cpu --build-arg GIT_COMMIT=$(git rev-parse HEAD) -t ghcr.io/tlpipe/tlpipe:0.1.0 .
#   docker build --build-arg VARIANT=gpu --build-arg GIT_COMMIT=$(git rev-parse HEAD) -t ghcr.io/tlpipe/tlpipe:0.1.0-gpu .
# Runtime dependencies only (requirements-runtime.txt: the lock without test tools). The gpu variant
# swaps tensorflow_cpu for requirements-gpu.txt (tensorflow[and-cuda], same version, with the CUDA/cuDNN
# wheels pinned); the node supplies the driver.
# A KFP task runs:  <image> components.<step> --flags   (ENTRYPOINT is python -m).

FROM python:3.11.13-slim-bookworm AS build
ARG VARIANT=cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src

# Dependencies first: this layer is reused until the requirement files change.
COPY requirements-runtime.txt requirements-gpu.txt ./
RUN case "$VARIANT" in \
      cpu) cp requirements-runtime.txt requirements.txt ;; \
      gpu) grep -v -E '^tensorflow[-_]cpu==' requirements-runtime.txt > requirements.txt \
           && cat requirements-gpu.txt >> requirements.txt \
           && grep -q '^tensorflow\[and-cuda\]==' requirements.txt ;; \
      *) echo "VARIANT must be cpu or gpu, got '$VARIANT'" >&2; exit 1 ;; \
    esac \
    && pip install --no-cache-dir -r requirements.txt \
    && pip check

COPY pyproject.toml params.yaml dvc.yaml ./
COPY tlpipe/ tlpipe/
COPY components/ components/
COPY operators/ operators/
COPY pipelines/ pipelines/
RUN pip install --no-cache-dir --no-deps .

FROM python:3.11.13-slim-bookworm
ARG VARIANT=cpu
# Declared in the final stage only, so a new commit does not invalidate the dependency layers.
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="tlpipe" \
      org.opencontainers.image.description="tlpipe transfer-learning pipeline steps (${VARIANT})" \
      org.opencontainers.image.revision="${GIT_COMMIT}"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/home/tlpipe \
    TLPIPE_VARIANT=${VARIANT} \
    TLPIPE_GIT_COMMIT=${GIT_COMMIT}
RUN groupadd --gid 10001 tlpipe \
    && useradd --uid 10001 --gid 10001 --no-log-init --create-home --home-dir /home/tlpipe --shell /usr/sbin/nologin tlpipe
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY params.yaml dvc.yaml ./
USER 10001:10001

# Batch steps, not a service: liveness is the process exit code.
HEALTHCHECK NONE
ENTRYPOINT ["python", "-m"]
