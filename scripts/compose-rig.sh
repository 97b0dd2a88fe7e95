#!/usr/bin/env bash
# The compose rig: from a fresh Debian machine (as root) to `docker-compose up` of the whole
# topology (Azurite, two aggregators, one job "pod": shared volume, shipper sidecar, BLAST
# container), the check, the finalize summary, and `down -v`, leaving nothing running.
# Exits non-zero when any expectation fails.
#
# There is no Docker engine here: Debian's podman serves the Docker API on a socket and Debian's
# docker-compose 1.29 drives it. No registry is reachable, so the base image is debootstrapped
# locally and passed to every Dockerfile as BASE_IMAGE; wheels (pip) and Azurite (npm) are
# fetched on the host and copied into the builds. More in the README's "docker compose" section.
#
# Environment:
#   BLAST_LOGS_RIG_STATE  podman's state (images, the debootstrapped base), kept between runs as
#                         a cache; default /var/tmp/blast-logs-podman. Delete it to start afresh.
#   BLAST_LOGS_RIG_KEEP=1 leave the stack and the podman service up after the check, for a look
#                         (the script prints how to reach it and how to tear it down).
#   BLAST_LOGS_RIG_POD_TIMEOUT  seconds to wait for the BLAST container to end (default 300).
#   BLAST_LOGS_RIG_RUNTIME  the OCI runtime podman uses (crun or runc); by default oci_runtime
#                         picks one from the machine's cgroup layout.
# Sourcing this file defines the stages without running them (tests/deploy/test_compose_rig.py).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STATE="${BLAST_LOGS_RIG_STATE:-/var/tmp/blast-logs-podman}"
KEEP="${BLAST_LOGS_RIG_KEEP:-}"
SUITE=bookworm
# Bumped when the layout of $STATE changes; a state folder with another key is wiped.
STATE_FORMAT=1

export COMPOSE_PROJECT_NAME=blastlogsrig
export DOCKER_HOST="unix://$STATE/podman.sock"
export CONTAINERS_CONF="$STATE/containers.conf"
export CONTAINERS_STORAGE_CONF="$STATE/storage.conf"
export TMPDIR="$STATE/tmp"
# docker-compose.yml reads BASE_IMAGE (Python images) and BLAST_BASE_IMAGE (Debian images): the
# rig points both at the base it builds locally (ensure_base).
POD_TIMEOUT="${BLAST_LOGS_RIG_POD_TIMEOUT:-300}"

# compose/podman/rig.yml pins addresses and /etc/hosts entries: podman's DNS loses lookups while
# containers start and stop (the file says what was measured).
COMPOSE=(docker-compose --ansi never -f "$ROOT/docker-compose.yml" -f "$ROOT/compose/podman/rig.yml")
SERVICE_PID=""
TIMINGS=()
RIG_T0=$(date +%s.%N)
STARTED_STACK=""

log() { printf '== rig: %s\n' "$*" >&2; }
die() { printf '== rig: FAILED: %s\n' "$*" >&2; exit 1; }

# timed NAME CMD...: runs CMD and records how long it took.
timed() {
  local name="$1" t0 t1
  shift
  t0=$(date +%s.%N)
  log "$name"
  "$@"
  t1=$(date +%s.%N)
  TIMINGS+=("$(awk -v n="$name" -v a="$t0" -v b="$t1" 'BEGIN {printf "%-26s %6.1f s", n, b - a}')")
}

print_timings() {
  local total
  total=$(awk -v a="$RIG_T0" -v b="$(date +%s.%N)" 'BEGIN {print b - a}')
  printf '== rig: timings\n' >&2
  local t
  for t in "${TIMINGS[@]}"; do printf '   %s\n' "$t" >&2; done
  printf '   %-26s %6.1f s\n' "total" "$total" >&2
}

# ---------------------------------------------------------------------------------------------
# Stage: which OCI runtime. Debian's podman uses crun 1.8 by default, and crun refuses every
# container ("cgroups in hybrid mode not supported, drop all controllers from cgroupv2") on a
# hybrid layout (cgroup v1 controllers plus the unified v2 mount at <root>/unified) whose unified
# mount offers any controller (hugetlb on some machines of this kind). Debian's runc 1.1 runs
# there. Pure cgroup v1, pure v2 (controllers at <root>/cgroup.controllers) and hybrid with an
# empty unified mount keep crun.

# cgroup_layout [CGROUP_ROOT]: v2, hybrid+controllers (v1 with a unified mount that offers
# controllers), or v1 (hybrid with an empty unified mount counts as v1), for the tree under
# CGROUP_ROOT (default /sys/fs/cgroup). cgroupfs files report size 0: the file is read, not stat'ed.
cgroup_layout() {
  local root="${1:-/sys/fs/cgroup}"
  if [ -e "$root/cgroup.controllers" ]; then
    echo v2
  elif [ -r "$root/unified/cgroup.controllers" ] && grep -q '[^[:space:]]' "$root/unified/cgroup.controllers"; then
    echo hybrid+controllers
  else
    echo v1
  fi
}

# oci_runtime [CGROUP_ROOT]: crun, or runc where crun would refuse; BLAST_LOGS_RIG_RUNTIME wins.
oci_runtime() {
  case "${BLAST_LOGS_RIG_RUNTIME:-}" in
  crun | runc) echo "$BLAST_LOGS_RIG_RUNTIME" ;;
  "") if [ "$(cgroup_layout "$@")" = hybrid+controllers ]; then echo runc; else echo crun; fi ;;
  *) die "BLAST_LOGS_RIG_RUNTIME must be crun or runc, not '$BLAST_LOGS_RIG_RUNTIME'" ;;
  esac
}

RUNTIME=""

choose_runtime() {
  RUNTIME=$(oci_runtime)
  log "OCI runtime: $RUNTIME (cgroup layout: $(cgroup_layout)${BLAST_LOGS_RIG_RUNTIME:+; set by BLAST_LOGS_RIG_RUNTIME})"
}

# ---------------------------------------------------------------------------------------------
# Stage: Debian packages.

install_packages() {
  local want=(podman debootstrap docker-compose "$RUNTIME") missing=() p
  for p in "${want[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || die "not root: cannot install ${missing[*]} (and podman needs root here)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# ---------------------------------------------------------------------------------------------
# Stage: podman's configuration and state folder. Everything is written before the first podman
# command; storage.conf never changes once written.

render() { # TEMPLATE DEST: fills in @STATE@, @NOFILE@, @NPROC@, @RUNTIME@; rewrites DEST only if it differs
  local nofile nproc tmp
  nofile=$(ulimit -Hn)
  [ "$nofile" = unlimited ] && nofile=1048576
  nproc=$(ulimit -Hu)
  if [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; then nproc=32768; fi
  tmp="$2.new"
  sed -e "s|@STATE@|$STATE|g" -e "s|@NOFILE@|$nofile|g" -e "s|@NPROC@|$nproc|g" \
    -e "s|@RUNTIME@|${RUNTIME:-$(oci_runtime)}|g" "$1" >"$tmp"
  if cmp -s "$tmp" "$2"; then rm -f "$tmp"; else mv "$tmp" "$2"; fi
}

configure_podman() {
  local key
  key="format=$STATE_FORMAT podman=$(dpkg-query -W -f='${Version}' podman) state=$STATE"
  if [ -d "$STATE" ] && [ "$(cat "$STATE/key" 2>/dev/null)" != "$key" ]; then
    log "state folder $STATE was made by another podman or rig version: starting afresh"
    wipe_state
  fi
  mkdir -p "$STATE/tmp" "$STATE/logs"
  echo "$key" >"$STATE/key"
  # Nothing started before this boot can still run: clear podman's runtime state, as a tmpfs
  # /run would on reboot (here /run is on disk).
  local boot
  boot=$(cat /proc/sys/kernel/random/boot_id)
  if [ "$(cat "$STATE/boot-id" 2>/dev/null)" != "$boot" ]; then
    rm -rf "$STATE/run" "$STATE/libpod-tmp"
    echo "$boot" >"$STATE/boot-id"
  fi
  render "$ROOT/compose/podman/containers.conf.in" "$CONTAINERS_CONF"
  render "$ROOT/compose/podman/storage.conf.in" "$CONTAINERS_STORAGE_CONF"
}

wipe_state() {
  # Overlay mounts of an interrupted run would keep files busy.
  grep -o " $STATE/[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m" || true; done
  rm -rf "$STATE"
}

# ---------------------------------------------------------------------------------------------
# Stage: the podman service (the Docker API on a socket in the state folder).

start_service() {
  rm -f "$STATE/podman.sock"
  podman system service --time=0 "$DOCKER_HOST" >"$STATE/logs/podman-service.log" 2>&1 9>&- &
  SERVICE_PID=$!
  local i
  for i in $(seq 1 300); do
    if curl -sf --unix-socket "$STATE/podman.sock" http://d/_ping >/dev/null 2>&1; then return 0; fi
    kill -0 "$SERVICE_PID" 2>/dev/null || { tail -20 "$STATE/logs/podman-service.log" >&2; die "podman service exited"; }
    sleep 0.1
  done
  die "podman service did not answer on $STATE/podman.sock within 30 s"
}

# Leftovers of an interrupted earlier run would clash with this one's names.
remove_leftovers() {
  local ids
  ids=$(podman ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME")
  if [ -n "$ids" ]; then
    log "removing containers an earlier run left behind"
    # shellcheck disable=SC2086
    podman rm -f -t 1 $ids >/dev/null
  fi
  podman volume ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" |
    xargs -r podman volume rm -f >/dev/null
}

# ---------------------------------------------------------------------------------------------
# Stage: the local bookworm base, standing in for python:3.11-slim-bookworm (Debian's Python is
# 3.11, with venv). Cached in the state folder under a tag that names its recipe.

build_base() { # ROOTFS MIRROR
  local rootfs="$1" mirror="$2"
  debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3 \
    "$SUITE" "$rootfs" "$mirror" >"$STATE/logs/debootstrap.log" 2>&1 ||
    { tail -30 "$STATE/logs/debootstrap.log" >&2; die "debootstrap failed"; }
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    # The same mirrors (and security suite) the host uses.
    cp /etc/apt/sources.list.d/debian.sources "$rootfs/etc/apt/sources.list.d/debian.sources"
    rm -f "$rootfs/etc/apt/sources.list"
  fi
  chroot "$rootfs" apt-get clean
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*.log "$rootfs"/tmp/*
}

mirror_url() {
  local m=""
  [ -f /etc/apt/sources.list.d/debian.sources ] &&
    m=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  [ -z "$m" ] && [ -f /etc/apt/sources.list ] &&
    m=$(awk '$1 == "deb" && $3 !~ /security/ {print $2; exit}' /etc/apt/sources.list)
  echo "${m:-http://deb.debian.org/debian}"
}

ensure_base() {
  local mirror key rootfs
  mirror=$(mirror_url)
  key=$( { echo "$SUITE $mirror"; declare -f build_base; cat /etc/apt/sources.list.d/debian.sources 2>/dev/null || true; } |
    sha256sum | cut -c1-12)
  BASE_IMAGE="localhost/blast-logs-base:$SUITE-$key"
  BLAST_BASE_IMAGE="$BASE_IMAGE"
  export BASE_IMAGE BLAST_BASE_IMAGE
  if podman image exists "$BASE_IMAGE"; then
    log "base image $BASE_IMAGE is cached"
    return 0
  fi
  rootfs="$STATE/rootfs"
  rm -rf "$rootfs"
  build_base "$rootfs" "$mirror"
  tar -C "$rootfs" --numeric-owner -c . |
    podman import --quiet \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' \
      --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
  # Older bases of this rig only take space.
  podman images --format '{{.Repository}}:{{.Tag}}' | grep '^localhost/blast-logs-base:' |
    grep -vx "$BASE_IMAGE" | xargs -r podman rmi -f >/dev/null 2>&1 || true
  log "base image $BASE_IMAGE: $(podman image inspect --format '{{.Size}}' "$BASE_IMAGE" | awk '{printf "%d MB", $1/1e6}')"
}

# ---------------------------------------------------------------------------------------------
# Stage: what the builds copy in, fetched on the host.

build_wheelhouse() {
  if [ ! -x .venv/bin/pip ]; then
    BLAST_LOGS_NO_AZURITE=1 source "$ROOT/scripts/bootstrap.sh"
  fi
  local pip=(.venv/bin/pip wheel -q --disable-pip-version-check) deps
  # The dependencies' wheels (the Azure extra's too: the aggregator image installs them) are kept
  # in the state folder while pyproject.toml stays the same; the project's own wheel is fresh.
  deps="$STATE/wheels/deps-$(sha256sum pyproject.toml | cut -c1-16)"
  if [ ! -f "$deps/.complete" ]; then
    rm -rf "$STATE/wheels"
    mkdir -p "$deps"
    "${pip[@]}" -w "$deps" '.[aggregator]' >"$STATE/logs/wheels.log" 2>&1 ||
      { tail -30 "$STATE/logs/wheels.log" >&2; die "pip wheel failed"; }
    rm -f "$deps"/blast_logs-*.whl
    touch "$deps/.complete"
  fi
  rm -rf wheelhouse
  mkdir wheelhouse
  cp "$deps"/*.whl wheelhouse/
  # A fixed timestamp makes the wheel's bytes depend on the sources alone, so unchanged sources
  # keep the image layers that install it cached. setuptools' build/ keeps modules that were
  # moved or deleted since the last build and would put them in the wheel: start without it.
  rm -rf "$ROOT/build"
  SOURCE_DATE_EPOCH="$(git log -1 --format=%ct 2>/dev/null || echo 315532800)" \
    "${pip[@]}" --no-deps -w wheelhouse . >"$STATE/logs/wheels.log" 2>&1 ||
    { tail -30 "$STATE/logs/wheels.log" >&2; die "pip wheel of the project failed"; }
  log "wheelhouse: $(find wheelhouse -name '*.whl' | wc -l) wheels"
}

stage_azurite() {
  local dir="$ROOT/compose/azurite" stamp
  stamp="$dir/node_modules/.rig-$(sha256sum "$dir/package-lock.json" | cut -c1-16)"
  if [ -f "$stamp" ]; then return 0; fi
  npm ci --omit=dev --no-audit --no-fund --silent --prefix "$dir" >/dev/null
  touch "$stamp"
}

# ---------------------------------------------------------------------------------------------
# Stage: images and the stack.

# One service per image: the aggregator image serves four services, and compose would build it
# four times over. Prints "SERVICE IMAGE" lines.
unique_builds() {
  "${COMPOSE[@]}" config | .venv/bin/python -c '
import sys
from ruamel.yaml import YAML
services = YAML(typ="safe").load(sys.stdin)["services"]
first = {}
for name, svc in services.items():
    if "build" in svc:
        first.setdefault(svc.get("image", name), name)
for image, name in first.items():
    print(name, image)
'
}

build_images() {
  local name image compose_builds=()
  while read -r name image; do
    if [ "$name" = azurite ]; then
      # podman's own build: compose's context upload of Azurite's 21,000 files costs ~40 s more.
      podman build -q --build-arg "BASE_IMAGE=$BLAST_BASE_IMAGE" -t "docker.io/library/$image" \
        "$ROOT/compose/azurite" >"$STATE/logs/build-azurite.log" 2>&1 ||
        { tail -40 "$STATE/logs/build-azurite.log" >&2; die "the Azurite image build failed"; }
    else
      compose_builds+=("$name")
    fi
  done < <(unique_builds)
  "${COMPOSE[@]}" build "${compose_builds[@]}" >"$STATE/logs/build.log" 2>&1 ||
    { tail -40 "$STATE/logs/build.log" >&2; die "docker-compose build failed (log: $STATE/logs/build.log)"; }
}

container_of() { "${COMPOSE[@]}" ps -q "$1"; }

# wait_exit SERVICE SECONDS: the service's container's exit code, once it has ended.
wait_exit() {
  local id code
  id=$(container_of "$1")
  [ -n "$id" ] || die "no container for service $1"
  code=$(timeout "$2" podman wait "$id") || die "$1 did not end within $2 s"
  echo "$code"
}

# ---------------------------------------------------------------------------------------------
# Stage: the service side comes up and is ready, as it is long before any job in production;
# then the job pod runs and its containers end.

SERVICES=(azurite aggregator-1 aggregator-2)
READY_TIMEOUT=120

start_services() {
  STARTED_STACK=1
  "${COMPOSE[@]}" up -d "${SERVICES[@]}" >"$STATE/logs/up.log" 2>&1 ||
    { cat "$STATE/logs/up.log" >&2; die "docker-compose up failed"; }
  local svc ip deadline=$((SECONDS + READY_TIMEOUT))
  for svc in aggregator-1 aggregator-2; do
    # /readyz answers 200 once the aggregator reaches its store (Azurite). Asked from the host on
    # the container's bridge address: `exec` sessions leave a conmon behind for minutes.
    ip=$(podman inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$(container_of "$svc")")
    until curl -sf -o /dev/null --max-time 2 "http://$ip:8080/readyz"; do
      [ "$SECONDS" -lt "$deadline" ] || { dump_logs; die "$svc ($ip) not ready within $READY_TIMEOUT s"; }
      sleep 0.2
    done
  done
}

run_pod() {
  local pod=() svc
  # Every other service but the check: the pod's set-up, the sidecar, BLAST. (Not
  # `up --exit-code-from check`: it stops everything as soon as the first one-shot container ends.)
  for svc in $("${COMPOSE[@]}" config --services); do
    case " ${SERVICES[*]} check " in *" $svc "*) ;; *) pod+=("$svc") ;; esac
  done
  "${COMPOSE[@]}" up -d --no-deps "${pod[@]}" >>"$STATE/logs/up.log" 2>&1 ||
    { cat "$STATE/logs/up.log" >&2; die "docker-compose up of the pod (${pod[*]}) failed"; }
}

end_pod() {
  local blast_rc shipper_rc
  blast_rc=$(wait_exit blast "$POD_TIMEOUT")
  log "blast ended with exit code $blast_rc"
  [ "$blast_rc" = 1 ] || { dump_logs; die "blast's exit code is $blast_rc, 1 expected (its last run has a bad option)"; }
  # The sidecar's entrypoint in docker-compose.yml sends the shipper SIGTERM once logs/blast.exit
  # appears, as the kubelet does once a pod's containers have ended. Exactly one SIGTERM: a
  # second one tells the shipper to stop draining, so the rig sends none of its own.
  shipper_rc=$(wait_exit shipper 120)
  log "shipper ended with exit code $shipper_rc"
  [ "$shipper_rc" = 0 ] || { dump_logs; die "the shipper's exit code is $shipper_rc, 0 expected after draining"; }
  compare_stdout
}

# What the BLAST container printed (its stdout, as `kubectl logs` shows it) is byte for byte what
# logwrap wrote to the volume; the check then compares that file with the stored artifacts.
compare_stdout() {
  local volume mountpoint
  podman logs "$(container_of blast)" >"$STATE/logs/blast.stdout" 2>&1
  volume="${COMPOSE_PROJECT_NAME}_blast-logs"
  mountpoint=$(podman volume inspect --format '{{.Mountpoint}}' "$volume")
  if cmp -s "$STATE/logs/blast.stdout" "$mountpoint/logs/blast.log"; then
    log "blast's stdout equals logs/blast.log in the volume ($(wc -l <"$STATE/logs/blast.stdout") lines)"
  else
    diff "$STATE/logs/blast.stdout" "$mountpoint/logs/blast.log" | head -20 >&2
    die "blast's stdout differs from logs/blast.log in the volume"
  fi
}

run_check() {
  local rc=0
  "${COMPOSE[@]}" up --no-deps --exit-code-from check check >"$STATE/logs/check-up.log" 2>&1 || rc=$?
  # The check's own output, unprefixed: the finalize summary, then one line per expectation.
  podman logs "$(container_of check)" 2>&1
  if [ "$rc" -ne 0 ]; then
    dump_logs
    die "the check failed (exit $rc)"
  fi
}

dump_logs() {
  log "last lines of every service's log"
  "${COMPOSE[@]}" logs --no-color --tail 25 >&2 2>&1 || true
}

teardown() {
  local rc=$?
  set +e
  if [ -n "$KEEP" ] && [ -n "$SERVICE_PID" ] && [ "$rc" -eq 0 ]; then
    log "BLAST_LOGS_RIG_KEEP: the stack and the podman service (pid $SERVICE_PID) stay up."
    log "  use: DOCKER_HOST=$DOCKER_HOST COMPOSE_PROJECT_NAME=$COMPOSE_PROJECT_NAME docker-compose ..."
    log "  end: that plus 'down -v -t 1', then kill $SERVICE_PID"
    print_timings
    exit "$rc"
  fi
  if [ -n "$SERVICE_PID" ]; then
    if [ -n "$STARTED_STACK" ]; then
      local t0 down_rc
      t0=$(date +%s.%N)
      "${COMPOSE[@]}" down -v -t 1 --remove-orphans >"$STATE/logs/down.log" 2>&1
      down_rc=$?
      TIMINGS+=("$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%-26s %6.1f s", "down -v", b - a}')")
      if [ "$down_rc" -ne 0 ]; then
        cat "$STATE/logs/down.log" >&2
        log "FAILED: docker-compose down -v (exit $down_rc)"
        [ "$rc" -eq 0 ] && rc=1
      fi
      local left
      left=$(podman ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" 2>/dev/null)
      left+=$(podman volume ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" 2>/dev/null)
      if [ -n "$left" ]; then
        log "FAILED: down -v left containers or volumes: $left"
        [ "$rc" -eq 0 ] && rc=1
      fi
    fi
    # Images superseded by this run's builds would otherwise pile up in the kept state folder.
    podman image prune -f >/dev/null 2>&1
    kill "$SERVICE_PID" 2>/dev/null
    wait "$SERVICE_PID" 2>/dev/null
  fi
  # conmon and aardvark-dns are podman's helpers; none may outlive the rig. aardvark-dns keeps its
  # config in netavark's fixed run folder, not in $STATE; both exit shortly after the teardown.
  local stray tries=0
  while :; do
    stray=$( { pgrep -f -- "$STATE"; pgrep -f -- 'aardvark-dns --config /run/containers/networks'; } || true)
    [ -n "$stray" ] && [ "$tries" -lt 25 ] || break
    tries=$((tries + 1))
    sleep 0.2
  done
  if [ -n "$stray" ]; then
    log "FAILED: processes still running on $STATE: $(ps -o pid=,args= -p "$(echo "$stray" | paste -sd,)" 2>/dev/null)"
    [ "$rc" -eq 0 ] && rc=1
  fi
  print_timings
  if [ "$rc" -eq 0 ]; then log "PASSED"; else log "FAILED (exit $rc)"; fi
  exit "$rc"
}

main() {
  [ "$(id -u)" -eq 0 ] || die "run as root (podman serves the Docker API as root here)"
  mkdir -p "$(dirname "$STATE")"
  exec 9>"$STATE.lock"
  flock -n 9 || die "another rig run holds $STATE.lock"
  trap teardown EXIT
  trap 'exit 130' INT TERM

  choose_runtime
  timed "packages" install_packages
  timed "podman config" configure_podman
  timed "podman service" start_service
  remove_leftovers
  timed "base image" ensure_base
  timed "wheelhouse" build_wheelhouse
  timed "azurite (npm)" stage_azurite
  timed "build images" build_images
  timed "up: azurite, aggregators" start_services
  timed "up: the job pod" run_pod
  timed "pod runs and ends" end_pod
  timed "check" run_check
}

# Sourcing the file (tests, debugging) defines the stages without running them.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then main "$@"; fi
