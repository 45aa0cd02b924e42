FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY apps apps
COPY streams streams
COPY models models
COPY vigil vigil
# torch==2.13.0 must resolve to its CPU build: pass your CPU wheel index at build time,
#   docker build --build-arg PIP_EXTRA_INDEX_URL=<cpu wheel index> .
ARG PIP_EXTRA_INDEX_URL=""
RUN pip install --no-cache-dir . && useradd -m vigil
USER vigil
ENV VIGIL_STATE_DIR=/home/vigil/.vigil
