#!/usr/bin/env bash
# Make sure a Docker engine answers. On a Debian-like host where we are root and none
# answers, install Debian's engine (docker.io) and start dockerd in the background.
# Sourced by ./run; prints what it does, and exact instructions when it cannot act.
set -euo pipefail

engine_answers() { timeout 10 docker info >/dev/null 2>&1; }

ensure_engine() {
  if engine_answers; then
    return 0
  fi
  if [ -n "${DOCKER_HOST:-}" ]; then
    echo "berth: the Docker engine at DOCKER_HOST=$DOCKER_HOST does not answer." >&2
    echo "berth: start it, or unset DOCKER_HOST to use a local engine." >&2
    return 1
  fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "berth: no Docker engine answers, and this is not a Debian-like host where we are root." >&2
    echo "berth: install Docker Engine (https://docs.docker.com/engine/install/), start it," >&2
    echo "berth: and make sure 'docker info' works for this user; then run this again." >&2
    return 1
  fi
  if ! command -v dockerd >/dev/null; then
    echo "berth: installing Debian's Docker engine (docker.io; under a minute; log: /var/log/berth-apt.log) ..."
    { DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io; } \
      >>/var/log/berth-apt.log 2>&1 || { echo "berth: installing docker.io failed; the end of /var/log/berth-apt.log says:" >&2; tail -n 15 /var/log/berth-apt.log >&2; return 1; }
  fi
  local log=/var/log/berth-dockerd.log
  if [ -S /var/run/docker.sock ] && [ -f /var/run/docker.pid ] && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    echo "berth: dockerd (pid $(cat /var/run/docker.pid)) is running but not answering yet; waiting..."
  else
    rm -f /var/run/docker.pid
    echo "berth: starting dockerd in the background (log: $log, pid file: /var/run/docker.pid)"
    # setsid: the engine outlives this shell; its pid is in /var/run/docker.pid.
    setsid dockerd --pidfile /var/run/docker.pid >>"$log" 2>&1 </dev/null &
  fi
  local i
  for i in $(seq 1 60); do
    if engine_answers; then
      echo "berth: Docker engine is ready ($(docker version --format '{{.Server.Version}}'))"
      return 0
    fi
    sleep 0.5
  done
  echo "berth: dockerd did not answer within 30 s; the end of $log says:" >&2
  tail -n 20 "$log" >&2 || true
  return 1
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  ensure_engine
fi
