#!/usr/bin/env bash
# Start the local Kubernetes cluster of `make run` (hubploy_dagster/local_cluster.py: real etcd,
# kube-apiserver, kube-controller-manager and kube-scheduler, with a kwok node that runs no containers)
# when it is not already serving. Its state (etcd data, certificates, kubeconfig, logs) is in
# .local/cluster/, so releases survive a restart. Prints the kubeconfig's path on stdout.
#   scripts/start-local-cluster.sh         start (or reuse) it
#   scripts/start-local-cluster.sh stop    stop it
set -euo pipefail
LOG_TAG=local-cluster
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

folder="$LOCAL_DIR/cluster"
pidfile="$LOCAL_DIR/cluster.pid"
serving() { [[ -f "$folder/ready" && -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

if [[ "${1:-}" == stop ]]; then
    if serving; then
        kill "$(cat "$pidfile")"
        log "stopped"
    fi
    exit 0
fi
if serving; then
    log "serving at $(cat "$folder/ready")"
    echo "$folder/kubeconfig.yaml"
    exit 0
fi
command -v kube-apiserver >/dev/null || die "kube-apiserver not found: run scripts/setup.sh control-plane (it builds the control plane from Go modules)"
mkdir -p "$folder"
rm -f "$folder/ready"
log "starting (logs: $folder/logs/, $LOCAL_DIR/cluster.log)"
nohup python -m hubploy_dagster.local_cluster "$folder" >"$LOCAL_DIR/cluster.log" 2>&1 9>&- &
echo $! >"$pidfile"
for _ in $(seq 1 600); do
    if [[ -f "$folder/ready" ]]; then
        log "serving at $(cat "$folder/ready")"
        echo "$folder/kubeconfig.yaml"
        exit 0
    fi
    kill -0 "$(cat "$pidfile")" 2>/dev/null || die "the local cluster did not start: $(tail -n 40 "$LOCAL_DIR/cluster.log")"
    sleep 0.2
done
die "the local cluster did not report ready within 120 s: $(tail -n 40 "$LOCAL_DIR/cluster.log")"
