# One image for every Vigil service (workers, trainers, topic set-up): docker-compose.yml
# builds it once as vigil:${VIGIL_TAG:-local}.
FROM python:3.11-slim
# LightGBM's OpenMP runtime (the slim image lacks it: the risk model would not load)
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY apps apps
COPY streams streams
COPY models models
COPY vigil vigil
# torch==2.13.0 must resolve to its CPU build (PyPI's is the CUDA one, several GB): the
# index below offers it; pass another (a mirror of it) with
#   docker build --build-arg PIP_EXTRA_INDEX_URL=<cpu wheel index> .
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir . \
    && useradd --create-home --uid 1000 vigil \
    && mkdir -p /models \
    && chown vigil:vigil /models
# /models belongs to vigil before a volume is mounted there: a new named volume takes the
# owner of the directory it is mounted on, so the trainers (non-root) can write models
USER vigil
ENV VIGIL_STATE_DIR=/home/vigil/.vigil \
    VIGIL_MODEL_DIR=/models
# metrics and health: risk worker, inspection worker, a scheduled trainer
EXPOSE 9108 9109 9110
