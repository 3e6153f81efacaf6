# illustfeed in one container: `illustfeed run` (scheduler, feed server, Discord bot when a token is set).
# Build: docker build -t illustfeed .   Run: see README.md ("Docker").
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY requirements.lock pyproject.toml README.md ./
# Exact pins from requirements.lock; torch==...+cpu exists only on the PyTorch CPU index (no CUDA libraries).
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.lock
COPY bot ./bot
COPY classifier ./classifier
COPY explain ./explain
COPY storage ./storage
RUN pip install --no-deps . \
    && useradd --create-home --uid 1000 illustfeed \
    && mkdir -p /data/inbox && chown -R illustfeed:illustfeed /data
USER illustfeed
# Everything the bot keeps lives in the volume: database, media, models, reports, and the inbox folder
# (the working directory makes the default `inbox` path resolve to /data/inbox).
ENV ILLUSTFEED_DATA_DIR=/data ILLUSTFEED_FEED_HOST=0.0.0.0
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
# Exec form: illustfeed is PID 1 and receives `docker stop`'s SIGTERM itself (it exits 0 within seconds).
CMD ["illustfeed", "run"]
