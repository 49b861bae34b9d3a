# Stage 1 (multiview diffusion + sparse structure), GPU. Build from the repository root:
#   docker build -f docker/stage1.Dockerfile -t synchuman/stage1 .
# The CUDA runtime comes from the base image; torch wheels bundle their own CUDA libraries (TORCH_INDEX_URL).
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
ARG TORCH_SPEC=torch
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH SYNCHUMAN_CKPTS=/ckpts
# gcc + libc headers + Python headers: `--compile` runs Triton, which builds its CUDA launcher modules with a C
# compiler at run time ("Failed to find C compiler" otherwise).
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv
RUN pip install "${TORCH_SPEC}" --index-url "${TORCH_INDEX_URL}"
WORKDIR /app
COPY pyproject.toml README.md ./
COPY synchuman ./synchuman
COPY synchuman_cli ./synchuman_cli
COPY services ./services
COPY gateway ./gateway
COPY scripts ./scripts
RUN pip install -e ".[stage1,pull]"
# torch.compile's caches (FX graphs, Triton kernels) in a directory the service user owns; mount a volume here
# (compose.stage1-cfg-parallel.yaml does) to keep them across restarts.
ENV TORCHINDUCTOR_CACHE_DIR=/var/cache/synchuman/inductor
RUN mkdir -p /var/cache/synchuman/inductor && chown -R 10001 /var/cache/synchuman
RUN useradd --uid 10001 --no-create-home synchuman
USER synchuman
EXPOSE 50053
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-m", "services.common.healthcheck", "127.0.0.1:50053", "--service", "synchuman.v1.Stage1Service"]
CMD ["python", "-m", "synchuman_cli", "--log-level", "INFO", "serve", "stage1", "--address", "0.0.0.0:50053", "--ckpts", "/ckpts"]
