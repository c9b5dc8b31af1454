# The detector service: `detector run` (the worker) by default; any other `detector`
# command works too (topics --create, simulate --to kafka, score, ...).
# Dependencies are pinned by constraints.txt, the versions the test suite passed with.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md LICENSE ./
COPY detector ./detector
COPY agents ./agents
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install -c constraints.txt .

FROM python:${PYTHON_VERSION}-slim-bookworm
ARG BUILD_COMMIT=unknown
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DETECTOR_CONFIG=/app/config/detector.yaml \
    DETECTOR_WEB_HOST=0.0.0.0 \
    DETECTOR_LOG_FORMAT=json \
    DETECTOR_BUILD_COMMIT=${BUILD_COMMIT}
RUN groupadd --system --gid 10001 detector \
 && useradd --system --uid 10001 --gid detector --home-dir /app --no-create-home --shell /usr/sbin/nologin detector
COPY --from=build /opt/venv /opt/venv
COPY --chown=root:root config /app/config
WORKDIR /app
USER 10001:10001
EXPOSE 6066
# Liveness of the worker's web page (python, since the slim image has no curl).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:6066/healthz', timeout=2)"]
ENTRYPOINT ["detector"]
CMD ["run"]
