#!/usr/bin/env bash
# Start the example's image registry (Debian's docker-registry) on 127.0.0.1:${REGISTRY_PORT:-5000}
# when nothing answers there. The bundled hubs push to localhost:5000/hubploy-dagster/...
# Storage: .local/registry/, log: .local/registry.log. Loopback registries need no TLS: the Docker
# engine treats 127.0.0.0/8 as insecure by default.
set -euo pipefail
LOG_TAG=registry
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

port="${REGISTRY_PORT:-5000}"
url="http://127.0.0.1:$port/v2/"
answers() { python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$url" 2>/dev/null; }

if answers; then
    log "a registry already answers on 127.0.0.1:$port"
    exit 0
fi
command -v docker-registry >/dev/null || die "docker-registry not found (Debian package docker-registry; scripts/setup.sh installs it)"

mkdir -p "$LOCAL_DIR/registry"
config="$LOCAL_DIR/registry.yml"
cat >"$config" <<YAML
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $LOCAL_DIR/registry}
  delete: {enabled: true}
http: {addr: 127.0.0.1:$port}
YAML
log "starting docker-registry on 127.0.0.1:$port (log: $LOCAL_DIR/registry.log)"
setsid nohup docker-registry serve "$config" </dev/null >>"$LOCAL_DIR/registry.log" 2>&1 &
for _ in $(seq 1 50); do
    answers && exit 0
    sleep 0.2
done
tail -n 10 "$LOCAL_DIR/registry.log" >&2 || true
die "docker-registry did not answer on $url; see $LOCAL_DIR/registry.log"
