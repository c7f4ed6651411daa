# shellcheck shell=bash
# Sourced by the scripts that use Docker (scripts/build-images.sh, e2e/image-test.sh).
#
# docker_pick_client   sets the array `docker` to a client that builds with BuildKit (the
#                      Dockerfile's BINARIES=host relies on BuildKit skipping the Rust stage):
#                      $DOCKER if set, else `docker` with the buildx plugin, else a client of
#                      Docker 20.10-22 on PATH or Debian's /usr/bin/docker (BuildKit built in).
# docker_daemon_up DIR uses the daemon that answers (DOCKER_HOST or the default socket), else
#                      starts Debian's dockerd with all its state under DIR and exports DOCKER_HOST.
#                      Flags that work on these machines: no iptables, no IP forwarding or
#                      masquerading (the host's sysctls and firewall stay as they are; published
#                      ports go through docker-proxy), OOM score 0 (negative ones are refused).
# docker_daemon_down   stops the dockerd that docker_daemon_up started (its containers, its
#                      containerd, its mounts), removes DIR and the docker0 bridge if it made it.
# On failure these return 1 with the reason in docker_why.
# chart_app_version    prints the chart's appVersion: the version of the images.

# shellcheck disable=SC2034 # set here, read by the scripts that source this file
docker=()
# shellcheck disable=SC2034
docker_why=""
docker_started=0
docker_pid=""
docker_dir=""
docker_bridge_existed=1

chart_app_version() {
  sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' "${1:-.}/charts/parley-operator/Chart.yaml"
}

docker_pick_client() {
  export DOCKER_BUILDKIT=1
  if [[ -n ${DOCKER:-} ]]; then
    read -r -a docker <<<"$DOCKER"
    return 0
  fi
  if command -v docker >/dev/null 2>&1 && docker buildx version >/dev/null 2>&1; then
    docker=(docker)
    return 0
  fi
  local c major
  for c in $(type -ap docker) /usr/bin/docker; do
    [[ -x $c ]] || continue
    major=$("$c" --version 2>/dev/null | sed -n 's/^Docker version \([0-9]*\)\..*/\1/p')
    if [[ -n $major && $major -ge 20 && $major -lt 23 ]]; then
      docker=("$c")
      return 0
    fi
  done
  docker_why="no Docker client that builds with BuildKit: install the buildx plugin, or Debian's docker.io (its client, 20.10, has BuildKit built in); or set DOCKER"
  return 1
}

docker_daemon_up() {
  docker_dir=$1
  if "${docker[@]}" info >/dev/null 2>&1; then
    docker_started=0
    return 0
  fi
  local dockerd
  dockerd=$(command -v dockerd 2>/dev/null || echo /usr/sbin/dockerd)
  if [[ ! -x $dockerd ]]; then
    docker_why="no Docker daemon answers and there is no dockerd to start (apt-get install docker.io)"
    return 1
  fi
  if [[ $(id -u) -ne 0 ]]; then
    docker_why="no Docker daemon answers, and starting dockerd needs root"
    return 1
  fi
  ip link show docker0 >/dev/null 2>&1 || docker_bridge_existed=0
  mkdir -p "$docker_dir"
  "$dockerd" --host "unix://$docker_dir/docker.sock" --data-root "$docker_dir/root" \
    --exec-root "$docker_dir/exec" --pidfile "$docker_dir/dockerd.pid" \
    --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false --oom-score-adjust=0 \
    --storage-driver "${PARLEY_DOCKER_STORAGE_DRIVER:-overlay2}" >"$docker_dir/dockerd.log" 2>&1 &
  docker_pid=$!
  docker_started=1
  export DOCKER_HOST=unix://$docker_dir/docker.sock
  local deadline=$((SECONDS + 60))
  until "${docker[@]}" info >/dev/null 2>&1; do
    if ! kill -0 "$docker_pid" 2>/dev/null; then
      docker_why="dockerd exited: $(tail -n 5 "$docker_dir/dockerd.log")"
      return 1
    fi
    if ((SECONDS >= deadline)); then
      # shellcheck disable=SC2034
      docker_why="dockerd did not answer within 60 s: $(tail -n 5 "$docker_dir/dockerd.log")"
      return 1
    fi
    sleep 0.2
  done
}

docker_daemon_down() {
  [[ $docker_started == 1 ]] || return 0
  docker_started=0
  local ids
  ids=$("${docker[@]}" ps -aq 2>/dev/null) || true
  # shellcheck disable=SC2086 # one id per word
  [[ -z $ids ]] || "${docker[@]}" rm -f $ids >/dev/null 2>&1 || true
  if kill -TERM "$docker_pid" 2>/dev/null; then
    local deadline=$((SECONDS + 30))
    while kill -0 "$docker_pid" 2>/dev/null && ((SECONDS < deadline)); do
      sleep 0.2
    done
    kill -KILL "$docker_pid" 2>/dev/null || true
  fi
  wait "$docker_pid" 2>/dev/null || true
  # Its containerd stops with it; after a SIGKILL it may not have.
  local pidfile=$docker_dir/exec/containerd/containerd.pid pid
  if [[ -s $pidfile ]]; then
    pid=$(cat "$pidfile")
    if [[ $(cat "/proc/$pid/comm" 2>/dev/null) == containerd ]]; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  local m
  awk -v r="$docker_dir/" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
  rm -rf --one-file-system "$docker_dir"
  if [[ $docker_bridge_existed == 0 ]] && ip link show docker0 >/dev/null 2>&1; then
    ip link delete docker0 2>/dev/null || true
  fi
}
