FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY requirements.lock pyproject.toml README.md ./
# The CPU wheel of torch keeps the image small (the default index resolves CUDA builds).
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.lock
COPY bot ./bot
COPY classifier ./classifier
COPY explain ./explain
COPY storage ./storage
RUN pip install --no-deps . && useradd --create-home --uid 1000 illustfeed && mkdir -p /data && chown illustfeed /data
USER illustfeed
ENV ILLUSTFEED_DATA_DIR=/data
VOLUME ["/data"]
CMD ["illustfeed", "status"]
