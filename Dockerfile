# The ainode image: the package installed with `pip install .` on a slim Python, run as a
# non-root user. Used by compose.yaml (`docker compose build`); not built here (no engine).
FROM python:3.11-slim

# torch from its CPU index: inference runs on Triton (GPU) or on CPU in-process; PyPI's
# default torch wheel is a multi-GB CUDA build the node does not need
ENV PIP_NO_CACHE_DIR=1 \
    PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu \
    PYTHONUNBUFFERED=1

RUN groupadd --system --gid 10001 ainode \
 && useradd --system --uid 10001 --gid ainode --home-dir /var/lib/ainode ainode \
 && mkdir -p /var/lib/ainode /etc/ainode \
 && chown ainode:ainode /var/lib/ainode

WORKDIR /opt/ainode
COPY pyproject.toml README.md ./
COPY node ./node
RUN pip install .
COPY model_repository ./model_repository
COPY config/node.yaml /etc/ainode/node.yaml

ENV AINODE__NODE__DATA_DIR=/var/lib/ainode \
    AINODE__INFERENCE__MODEL_REPOSITORY=/opt/ainode/model_repository
USER ainode
VOLUME ["/var/lib/ainode"]
EXPOSE 11112 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
STOPSIGNAL SIGTERM
CMD ["ainode", "serve", "--config", "/etc/ainode/node.yaml"]
