# Gateway (public gRPC ReconstructionService + HTTP bridge), CPU only. Build from the repository root:
#   docker build -f docker/gateway.Dockerfile -t synchuman/gateway .
ARG PYTHON_IMAGE=python:3.12-slim
FROM ${PYTHON_IMAGE}
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_SPEC=torch
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN pip install "${TORCH_SPEC}" --index-url "${TORCH_INDEX_URL}"
WORKDIR /app
COPY pyproject.toml README.md ./
COPY synchuman ./synchuman
COPY synchuman_cli ./synchuman_cli
COPY services ./services
COPY gateway ./gateway
COPY scripts ./scripts
RUN pip install -e ".[gateway]"
RUN useradd --uid 10001 --create-home synchuman && mkdir -p /data && chown synchuman /data
USER synchuman
EXPOSE 50051 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "services.common.healthcheck", "127.0.0.1:50051", "--service", "synchuman.v1.ReconstructionService"]
CMD ["python", "-m", "synchuman_cli", "--log-level", "INFO", "serve", "gateway", "--address", "0.0.0.0:50051", "--http", "0.0.0.0:8080", "--preprocess", "dns:///preprocess:50052", "--stage1", "dns:///stage1:50053", "--stage2", "dns:///stage2:50054", "--data-dir", "/data"]
