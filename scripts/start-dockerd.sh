#!/usr/bin/env bash
# Start a Docker engine in the background when none answers (`docker info` fails).
# Log: .local/dockerd.log, pidfile: .local/dockerd.pid. Waits up to DOCKERD_WAIT seconds (60).
#
# Flags: none beyond the pidfile, on purpose. Tried on this machine kind (Firecracker VM, Debian 12,
# kernel 6.x, ext4 root, cgroup v1, no systemd) with Debian's docker.io 20.10:
#   - storage driver: dockerd picks overlay2 by itself (the root is ext4 with d_type), so no
#     --storage-driver; vfs or fuse-overlayfs are not needed here.
#   - networking: the default docker0 bridge and iptables NAT work, so containers and
#     `docker build` RUN steps reach the package registries without `--network host`.
#     Where a kernel lacks iptables/bridge support, dockerd exits at start with a NAT/bridge
#     error in the log: then set DOCKERD_EXTRA_ARGS="--iptables=false --bridge=none" (also
#     tried here: it works, but only `--network host` containers and builds then have network).
set -euo pipefail
LOG_TAG=dockerd
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if docker info >/dev/null 2>&1; then
    log "a Docker engine already answers"
    exit 0
fi

command -v dockerd >/dev/null || die "dockerd not found on PATH (Debian package docker.io; scripts/setup.sh installs it)"
command -v docker >/dev/null || die "docker CLI not found on PATH (Debian package docker.io)"

mkdir -p "$LOCAL_DIR"
log_file="$LOCAL_DIR/dockerd.log"
pid_file="$LOCAL_DIR/dockerd.pid"
wait_s="${DOCKERD_WAIT:-60}"

# A dockerd we started earlier may still be starting up: wait for it instead of starting a second one.
pid=""
log_start=1
if [[ -s "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null \
    && [[ "$(cat "/proc/$(cat "$pid_file")/comm" 2>/dev/null)" == dockerd ]]; then
    pid="$(cat "$pid_file")"
    log "dockerd (pid $pid) is running but not answering yet; waiting for it"
else
    # shellcheck disable=SC2206  # DOCKERD_EXTRA_ARGS is a whitespace-separated flag list
    extra=(${DOCKERD_EXTRA_ARGS:-})
    log "starting dockerd${extra[*]:+ ${extra[*]}} (log: $log_file)"
    touch "$log_file"
    log_start=$(($(wc -l <"$log_file") + 1)) # show only this start's lines on failure
    printf '\n=== %s: dockerd %s\n' "$(date -Is)" "${extra[*]:-}" >>"$log_file"
    # setsid + nohup + all three fds redirected: dockerd must outlive this script and make,
    # and must not hold the caller's stdout/stderr pipes open.
    setsid nohup dockerd --pidfile "$pid_file" "${extra[@]}" </dev/null >>"$log_file" 2>&1 &
    pid=$!
fi

deadline=$((SECONDS + wait_s))
until docker info >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
        tail -n "+$log_start" "$log_file" | tail -n 20 >&2 || true
        die "dockerd exited during start-up; see $log_file (last lines above)"
    fi
    if ((SECONDS >= deadline)); then
        tail -n "+$log_start" "$log_file" | tail -n 20 >&2 || true
        die "dockerd (pid $pid) did not answer within ${wait_s}s; see $log_file (last lines above)"
    fi
    sleep 0.5
done
log "Docker engine up: $(docker info --format 'server {{.ServerVersion}}, storage {{.Driver}}' 2>/dev/null)"
