# One image for every process: subscriber, worker, health, rq-dashboard, the sandbox.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY subscriber ./subscriber
COPY worker ./worker
COPY healthcheck ./healthcheck
COPY sandbox ./sandbox
COPY provisioner ./provisioner
# The sandbox's custom fields come from the Salesforce source (packed into the wheel).
COPY salesforce/force-app/main/default/objects ./salesforce/force-app/main/default/objects
RUN pip install '.[dashboard]'

# The Salesforce key is mounted at runtime (/app/secrets/sf-private.key), never baked in.
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin app \
    && mkdir -p /app/secrets /sandbox && chown app /sandbox
USER app

CMD ["provisioner", "--help"]
