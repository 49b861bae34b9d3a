# Preprocess (decode, segment, frame, check), CPU only. Build from the repository root:
#   docker build -f docker/preprocess.Dockerfile -t synchuman/preprocess .
ARG PYTHON_IMAGE=python:3.12-slim
FROM ${PYTHON_IMAGE}
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_SPEC=torch
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 SYNCHUMAN_CKPTS=/ckpts
RUN pip install "${TORCH_SPEC}" --index-url "${TORCH_INDEX_URL}"
WORKDIR /app
COPY pyproject.toml README.md ./
COPY synchuman ./synchuman
COPY synchuman_cli ./synchuman_cli
COPY services ./services
COPY gateway ./gateway
COPY scripts ./scripts
RUN pip install -e ".[preprocess]"
RUN useradd --uid 10001 --no-create-home synchuman
USER synchuman
EXPOSE 50052
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "services.common.healthcheck", "127.0.0.1:50052", "--service", "synchuman.v1.PreprocessService"]
CMD ["python", "-m", "synchuman_cli", "--log-level", "INFO", "serve", "preprocess", "--address", "0.0.0.0:50052", "--segmentation-dir", "/ckpts/segmentation"]
