# The alertrelay worker. Built and run by docker-compose.yml next to a Kafka broker:
#   docker compose up --build
# Configuration is by environment variables (README: Configuration).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the package needs: the project metadata first, then the three packages.
COPY pyproject.toml README.md ./
COPY streams ./streams
COPY sinks ./sinks
COPY schemas ./schemas
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /data --create-home alertrelay

USER alertrelay
WORKDIR /data

# Defaults for a container: bind the HTTP API on all interfaces so the published port
# reaches it; the broker is the `kafka` service of docker-compose.yml (override both
# with -e when running the image elsewhere).
ENV KAFKA_BOOTSTRAP_SERVERS=kafka:9092 \
    ALERTRELAY_WEB_HOST=0.0.0.0 \
    ALERTRELAY_WEB_PORT=6066 \
    ALERTRELAY_DATA_DIR=/data

EXPOSE 6066

# /health answers 200 only once partitions are assigned and the config table is recovered.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('ALERTRELAY_WEB_PORT', '6066'), timeout=4)"]

CMD ["alertrelay", "worker"]
