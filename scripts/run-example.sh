#!/usr/bin/env bash
# Run the Dagster project (webserver + daemon via `dagster dev`) against the local example
# deployment repository made by scripts/make-example-repo.sh. Stop it with Ctrl-C.
#   DAGSTER_PORT  webserver port on 127.0.0.1 (default 3000)
set -euo pipefail
LOG_TAG=run
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

KUBECONFIG_BEFORE="${KUBECONFIG:-}"
export DAGSTER_HOME="$LOCAL_DIR/dagster-home"
export HUBPLOY_REPO="$LOCAL_DIR/example-repo.git"
# The example's secrets are encrypted to the demo-only key; its images build from the locally made
# base image, because the upstream one cannot be pulled here (set HUBPLOY_BUILD_ARGS= to use upstream).
export SOPS_AGE_KEY_FILE="${SOPS_AGE_KEY_FILE:-$ROOT/hubs/DEMO-ONLY-age-key.txt}"
export HUBPLOY_BUILD_ARGS="${HUBPLOY_BUILD_ARGS-BASE_IMAGE=hubploy-dagster/base:busybox}"
port="${DAGSTER_PORT:-3000}"

[[ -f workspace.yaml ]] || die "$ROOT/workspace.yaml is missing: dagster dev loads the code locations from it"
command -v dagster >/dev/null || die "dagster not found on PATH: run scripts/setup.sh (it fills .venv)"

# The cluster: your kubeconfig's current context when it answers, else the local cluster.
if kubectl version --request-timeout=5s >/dev/null 2>&1; then
    log "deploying to your kubeconfig's cluster (context $(kubectl config current-context))"
    "$ROOT/scripts/make-example-repo.sh"
else
    KUBECONFIG="$("$ROOT/scripts/start-local-cluster.sh")"
    export KUBECONFIG
    unset HELM_KUBECONTEXT
    log "no usable kubeconfig (KUBECONFIG=${KUBECONFIG_BEFORE:-~/.kube/config}): deploying to the local cluster,"
    log "  a real Kubernetes API server whose kwok node runs no containers (KUBECONFIG=$KUBECONFIG)."
    log "  To deploy to a real cluster: point KUBECONFIG at it, then scripts/start-local-cluster.sh stop; make run"
    EXAMPLE_WITHOUT_HUB_API=1 "$ROOT/scripts/make-example-repo.sh"
fi

"$ROOT/scripts/start-registry.sh"

mkdir -p "$DAGSTER_HOME"
# The project's instance settings: queued runs, one run per hub at a time, telemetry off.
cp "$ROOT/dagster.yaml" "$DAGSTER_HOME/dagster.yaml"
export HUBPLOY_WEBSERVER_URL="${HUBPLOY_WEBSERVER_URL:-http://127.0.0.1:$port}"
# Offline set-ups take the jupyterhub chart from the shared copy instead of the chart repository.
shared_charts="$(dirname "$ROOT")/shared/charts"
if [[ -z "${HUBPLOY_CHART_CACHE:-}" && -d "$shared_charts" ]]; then
    export HUBPLOY_CHART_CACHE="$shared_charts"
fi

log "dagster dev on http://127.0.0.1:$port (DAGSTER_HOME=$DAGSTER_HOME, HUBPLOY_REPO=$HUBPLOY_REPO)"
exec dagster dev -w workspace.yaml -h 127.0.0.1 -p "$port"
