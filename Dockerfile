# Berth's own image: build it with `./run image` (which first installs node_modules and
# downloads the Python wheels on the host, so the build itself needs no network).
# Run with the host engine's socket (see README, "Berth in a container").
ARG BASE=debian:bookworm
FROM ${BASE}

ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 PYTHONUNBUFFERED=1 \
    BERTH_HOST=0.0.0.0 BERTH_PORT=5000 BERTH_DATA_DIR=/data
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt .
COPY .build/wheels /tmp/wheels
RUN python3 -m venv /venv \
 && /venv/bin/pip install --no-cache-dir --disable-pip-version-check -q --no-index --find-links /tmp/wheels -r requirements.txt \
 && rm -rf /tmp/wheels
# node_modules comes from the build context (./run installs it with npm ci): the browser
# packages are served from it, never copied into the repository.
COPY . .
RUN test -f node_modules/@xterm/xterm/lib/xterm.js || { echo "run ./run setup (npm ci) before docker build" >&2; exit 1; }

VOLUME /data
EXPOSE 5000
CMD ["/venv/bin/python", "app.py"]
