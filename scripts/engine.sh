#!/usr/bin/env bash
# Make sure a Docker engine answers that can isolate learners. On a Debian-like host where
# we are root and none answers, install Debian's engine (docker.io) and start Berth's
# engine in the background: dockerd with user namespaces (root in a machine is an
# unprivileged user on the host) and its data on a btrfs file system, so that each
# machine's disk can be bounded (docs/security.md says why each).
# Sourced by ./run; prints what it does, and exact instructions when it cannot act.
set -euo pipefail

ENGINE_DATA=/var/lib/berth-engine          # the engine's data root (a btrfs mount)
ENGINE_DISK=/var/lib/berth-engine.btrfs    # the sparse file that holds it
ENGINE_PID=/var/run/docker.pid
ENGINE_LOG=/var/log/berth-dockerd.log
ENGINE_FLAGS=(--userns-remap=default --storage-driver=btrfs "--data-root=$ENGINE_DATA")

engine_answers() { timeout 10 docker info >/dev/null 2>&1; }
engine_isolates() { docker info --format '{{json .SecurityOptions}}' 2>/dev/null | grep -q 'name=userns'; }

say() { echo "berth: $*" >&2; }

apt_install() {
  say "installing $* (Debian packages; log: /var/log/berth-apt.log) ..."
  { DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"; } \
    >>/var/log/berth-apt.log 2>&1 || { say "installing $* failed; the end of /var/log/berth-apt.log says:"; tail -n 15 /var/log/berth-apt.log >&2; return 1; }
}

# The engine's data on btrfs in a sparse file: btrfs can bound each container's disk
# (quota groups), which ext4 cannot; the file grows as it is used, up to 80% of the space
# free when it is made, so the engine cannot fill the host's disk either.
engine_disk() {
  mountpoint -q "$ENGINE_DATA" && return 0
  command -v mkfs.btrfs >/dev/null || apt_install btrfs-progs
  if [ ! -f "$ENGINE_DISK" ]; then
    local free
    free=$(df --output=avail -B1 "$(dirname "$ENGINE_DISK")" | tail -n 1)
    say "making the engine's disk: $ENGINE_DISK (btrfs, grows as used up to $((free * 8 / 10 / 1024 / 1024 / 1024)) GiB)"
    truncate -s $((free * 8 / 10)) "$ENGINE_DISK"
    mkfs.btrfs -q "$ENGINE_DISK" >/dev/null
  fi
  mkdir -p "$ENGINE_DATA"
  mount -o loop,discard=async "$ENGINE_DISK" "$ENGINE_DATA"
}

# btrfs "simple quotas" (Linux 6.7 and later) count what each machine writes and always
# enforce the bound. Full quota groups, which the engine would otherwise enable, are marked
# inconsistent whenever a container is removed and do not enforce limits until a rescan
# ends, and they make deleting a removed machine's snapshots slow: btrfs's cleaner then
# falls behind and the engine with it (seen here: sessions ready in 30-60 s instead of 2).
# The engine turns quotas off whenever it stops (its btrfs driver's clean-up) and turns full
# ones on at its next start, so they are set before every start of the engine, not only on
# a new disk; the engine applies each container's bound again when it mounts it. Debian 12's
# btrfs-progs predate simple quotas: ask the kernel directly.
simple_quotas() {
  local uuid mode
  uuid=$(findmnt -no UUID --mountpoint "$1" 2>/dev/null | head -n 1)
  mode=$(cat "/sys/fs/btrfs/$uuid/qgroups/mode" 2>/dev/null || echo off)
  [ "$mode" != squota ] || return 0
  python3 - "$1" "$mode" <<'PY' || say "no simple quotas on this kernel (6.7 or later has them): machine disk bounds lapse while btrfs rescans"
import fcntl, os, struct, sys
BTRFS_IOC_QUOTA_CTL, DISABLE, ENABLE_SIMPLE_QUOTA = 0xC0109428, 2, 4
fd = os.open(sys.argv[1], os.O_RDONLY)
if sys.argv[2] == "qgroup":  # full quota groups, left by an engine that did not stop cleanly
    fcntl.ioctl(fd, BTRFS_IOC_QUOTA_CTL, bytearray(struct.pack("QQ", DISABLE, 0)))
fcntl.ioctl(fd, BTRFS_IOC_QUOTA_CTL, bytearray(struct.pack("QQ", ENABLE_SIMPLE_QUOTA, 0)))
PY
}

# A dockerd that an earlier ./run started (its pid file, our log) without today's flags
# is restarted with them; any other engine is the operator's, and is left alone.
ours_without_isolation() {
  [ -f "$ENGINE_PID" ] && [ -f "$ENGINE_LOG" ] || return 1
  local pid cmdline
  pid=$(cat "$ENGINE_PID")
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  case "$cmdline" in
    "dockerd --pidfile $ENGINE_PID "*) [[ "$cmdline" != *--userns-remap* ]] ;;
    *) return 1 ;;
  esac
}

stop_ours() {
  local pid
  pid=$(cat "$ENGINE_PID")
  say "restarting the engine that ./run started earlier (pid $pid) with user namespaces ..."
  # What Berth made on it goes first: the new engine keeps its data elsewhere and would not
  # know it, and the old networks' bridges would stay on the host, routing a session
  # network's addresses away from the new engine's.
  docker ps -aq --filter label=berth.role | xargs -r docker rm -f >/dev/null 2>&1 || true
  docker network ls -q --filter label=berth.role | xargs -r docker network rm >/dev/null 2>&1 || true
  docker volume ls -q --filter label=berth.role | xargs -r docker volume rm -f >/dev/null 2>&1 || true
  kill -TERM "$pid"
  local i
  for i in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.5
  done
  say "dockerd (pid $pid) did not stop within 30 s"
  return 1
}

ensure_engine() {
  if engine_answers; then
    if engine_isolates; then
      return 0
    fi
    if [ "$(id -u)" = 0 ] && ours_without_isolation; then
      stop_ours
    else
      say "the Docker engine here does not remap users: Berth will not start learner machines on it"
      say "unless BERTH_ISOLATION=trusted (docs/security.md)."
      return 0
    fi
  fi
  if [ -n "${DOCKER_HOST:-}" ]; then
    say "the Docker engine at DOCKER_HOST=$DOCKER_HOST does not answer."
    say "start it, or unset DOCKER_HOST to use a local engine."
    return 1
  fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    say "no Docker engine answers, and this is not a Debian-like host where we are root."
    say "install Docker Engine (https://docs.docker.com/engine/install/) with \"userns-remap\": \"default\""
    say "in its daemon.json, start it, make sure 'docker info' works for this user; then run this again."
    return 1
  fi
  if ! command -v dockerd >/dev/null; then
    apt_install docker.io
  fi
  engine_disk
  if [ -S /var/run/docker.sock ] && [ -f "$ENGINE_PID" ] && kill -0 "$(cat "$ENGINE_PID")" 2>/dev/null; then
    say "dockerd (pid $(cat "$ENGINE_PID")) is running but not answering yet; waiting..."
  else
    rm -f "$ENGINE_PID"
    simple_quotas "$ENGINE_DATA"
    say "starting Berth's engine in the background (log: $ENGINE_LOG, pid file: $ENGINE_PID)"
    # setsid: the engine outlives this shell; its pid is in $ENGINE_PID.
    setsid dockerd --pidfile "$ENGINE_PID" "${ENGINE_FLAGS[@]}" >>"$ENGINE_LOG" 2>&1 </dev/null &
  fi
  local i
  for i in $(seq 1 60); do
    if engine_answers; then
      say "Docker engine is ready ($(docker version --format '{{.Server.Version}}'), user namespaces, btrfs)"
      return 0
    fi
    sleep 0.5
  done
  say "dockerd did not answer within 30 s; the end of $ENGINE_LOG says:"
  tail -n 20 "$ENGINE_LOG" >&2 || true
  return 1
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  ensure_engine
fi
