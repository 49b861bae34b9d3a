# Stage 2 (structured latent, decoders, GLB export), GPU. Build from the repository root:
#   docker build -f docker/stage2.Dockerfile -t synchuman/stage2 .
# A CUDA *devel* base: gsplat's CUDA kernels are compiled with nvcc while the image is built (see below).
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-devel-ubuntu24.04
FROM ${CUDA_IMAGE}
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
ARG TORCH_SPEC=torch
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH SYNCHUMAN_CKPTS=/ckpts
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-dev \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv
RUN pip install "${TORCH_SPEC}" --index-url "${TORCH_INDEX_URL}"
WORKDIR /app
COPY pyproject.toml README.md ./
COPY synchuman ./synchuman
COPY synchuman_cli ./synchuman_cli
COPY services ./services
COPY gateway ./gateway
COPY scripts ./scripts
RUN pip install -e ".[stage2]" gsplat
# gsplat's CUDA kernels are built here, at image build time (nvcc; no GPU needed), for A100, A10/A40, L4/L40 and
# H100/H200 (+PTX for newer GPUs), into a directory the service user owns: containers start without the ~1 minute
# JIT build and without needing a writable home directory. The service's warm-up renders once, so a GPU these
# kernels cannot run on fails the start-up, not the first job.
ENV TORCH_EXTENSIONS_DIR=/opt/torch-extensions TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0+PTX"
RUN MAX_JOBS=8 python -c "from gsplat.cuda._backend import _C; assert _C is not None, 'gsplat CUDA build failed'" \
    && chown -R 10001 /opt/torch-extensions
RUN useradd --uid 10001 --no-create-home synchuman
USER synchuman
EXPOSE 50054
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-m", "services.common.healthcheck", "127.0.0.1:50054", "--service", "synchuman.v1.Stage2Service"]
CMD ["python", "-m", "synchuman_cli", "--log-level", "INFO", "serve", "stage2", "--address", "0.0.0.0:50054", "--ckpts", "/ckpts"]
