# syntax=docker/dockerfile:1
# tlpipe pipeline image. One Dockerfile, two variants:
#   docker build --build-arg VARIANT=cpu -t ghcr.io/tlpipe/tlpipe:0.1.0 .
#   docker build --build-arg VARIANT=gpu -t ghcr.io/tlpipe/tlpipe:0.1.0-gpu .
# The gpu variant swaps tensorflow-cpu for tensorflow[and-cuda] (same version),
# which pulls the CUDA/cuDNN runtime as pip wheels; the node supplies the driver.
# A KFP task runs:  <image> components.<step> --flags   (ENTRYPOINT is python -m).

FROM python:3.11.13-slim-bookworm AS build
ARG VARIANT=cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src

# Dependencies first: this layer is reused until requirements.lock changes.
COPY requirements.lock ./
RUN case "$VARIANT" in \
      cpu) ;; \
      gpu) sed -i -E 's/^tensorflow[-_]cpu==/tensorflow[and-cuda]==/' requirements.lock \
           && grep -q '^tensorflow\[and-cuda\]==' requirements.lock ;; \
      *) echo "VARIANT must be cpu or gpu, got '$VARIANT'" >&2; exit 1 ;; \
    esac \
    && pip install --no-cache-dir -r requirements.lock

COPY pyproject.toml params.yaml dvc.yaml ./
COPY components/ components/
COPY pipelines/ pipelines/
RUN pip install --no-cache-dir --no-deps .

FROM python:3.11.13-slim-bookworm
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="tlpipe" \
      org.opencontainers.image.description="tlpipe transfer-learning pipeline steps (${VARIANT})"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/home/tlpipe \
    TLPIPE_VARIANT=${VARIANT}
RUN groupadd --gid 10001 tlpipe \
    && useradd --uid 10001 --gid 10001 --no-log-init --create-home --home-dir /home/tlpipe --shell /usr/sbin/nologin tlpipe
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY params.yaml dvc.yaml ./
USER 10001:10001

# Batch steps, not a service: liveness is the process exit code.
HEALTHCHECK NONE
ENTRYPOINT ["python", "-m"]
