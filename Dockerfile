# One image for both halves; docker-compose.yml runs it twice (plant, gateway).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY devices ./devices
COPY gateway ./gateway
COPY nodesets ./nodesets
COPY config ./config
RUN pip install --no-cache-dir -e .
ENV TWINEDGE_DATA_DIR=/data
VOLUME ["/data"]
ENTRYPOINT ["twinedge"]
