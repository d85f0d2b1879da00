# The reconciler daemon as a container image (docs/deploy.md).
#   docker build -t reconciler .
#   docker run -v "$PWD":/workspace:ro -v reconciler-state:/var/lib/reconciler -p 127.0.0.1:8780:8780 reconciler
# The image holds the program only: the workspace is mounted read-only at /workspace and the state database
# (contacts, consent: personal data) lives on the volume at /var/lib/reconciler, never in the image.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# tini runs as PID 1: it hands SIGTERM to the daemon and reaps the processes it starts (git, renderers).
# git tells `status` and /healthz the commit of the mounted workspace, which belongs to another user than this one.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git tini \
    && rm -rf /var/lib/apt/lists/* \
    && git config --system --add safe.directory /workspace
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/reconciler --shell /usr/sbin/nologin reconciler \
    && mkdir -p /workspace /var/lib/reconciler \
    && chown reconciler:reconciler /var/lib/reconciler

ENV RECONCILER_STATE=/var/lib/reconciler/reconciler.db \
    RECONCILER_HOST=0.0.0.0 \
    RECONCILER_PORT=8780 \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/reconciler"]
WORKDIR /workspace
USER 10001:10001
EXPOSE 8780

# No curl in the image: Python asks /healthz, which answers 503 while the daemon is degraded.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['RECONCILER_PORT'] + '/healthz', timeout=4)"]

# SIGTERM lets messages on the wire finish; give it `docker stop -t 30` (compose: stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "reconciler"]
CMD ["run"]
