# Stage 1 (multiview diffusion + sparse structure), GPU. Build from the repository root:
#   docker build -f docker/stage1.Dockerfile -t synchuman/stage1 .
# The CUDA runtime comes from the base image; torch wheels bundle their own CUDA libraries (TORCH_INDEX_URL).
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
ARG TORCH_SPEC=torch
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH SYNCHUMAN_CKPTS=/ckpts
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv
RUN pip install "${TORCH_SPEC}" --index-url "${TORCH_INDEX_URL}"
WORKDIR /app
COPY pyproject.toml README.md ./
COPY synchuman ./synchuman
COPY services ./services
COPY gateway ./gateway
COPY scripts ./scripts
RUN pip install -e ".[stage1,pull]"
RUN useradd --uid 10001 --no-create-home synchuman
USER synchuman
EXPOSE 50053
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-m", "services.common.healthcheck", "127.0.0.1:50053", "--service", "synchuman.v1.Stage1Service"]
CMD ["python", "-m", "synchuman.cli", "--log-level", "INFO", "serve", "stage1", "--address", "0.0.0.0:50053", "--ckpts", "/ckpts"]
