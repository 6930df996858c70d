#!/usr/bin/env bash
# Build the front door's programs from Go modules (pinned in scripts/front-door/) and link them into
# .tools/bin: oauth2-proxy (the authenticator deploy/front-door configures) and test-idp (the OpenID Connect
# provider its tests sign in with). nginx comes from Debian (scripts/setup.sh apt).
#
# As for the control plane, the binaries live in a cache folder keyed by the version and the modules' go.sum
# (HUBPLOY_FRONT_DOOR_CACHE, default ~/.cache/hubploy-dagster/front-door): a second set-up takes a second, the
# first about a minute and a half on 2 cores.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LOG_TAG=front-door
MODULES="$ROOT/scripts/front-door"
# shellcheck source=scripts/front-door/versions
source "$MODULES/versions"

key="oauth2-proxy-$OAUTH2_PROXY_VERSION-$(cat "$MODULES"/*/go.sum "$MODULES"/test-idp/main.go | sha256sum | cut -c1-12)"
CACHE="${HUBPLOY_FRONT_DOOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hubploy-dagster/front-door}"
BIN="$CACHE/$key/bin"

link_programs() {
    mkdir -p "$TOOLS_BIN"
    ln -sfn "$BIN/oauth2-proxy" "$TOOLS_BIN/oauth2-proxy"
    ln -sfn "$BIN/test-idp" "$TOOLS_BIN/test-idp"
}

if [[ -x "$BIN/oauth2-proxy" && -x "$BIN/test-idp" ]]; then
    link_programs
    log "oauth2-proxy $OAUTH2_PROXY_VERSION and test-idp present in $BIN"
    exit 0
fi

require_go 26 "oauth2-proxy $OAUTH2_PROXY_VERSION"
work="$CACHE/$key.building.$$"
rm -rf "$work"
mkdir -p "$work/bin"
trap 'rm -rf "$work"' EXIT

start=$SECONDS
log "building oauth2-proxy $OAUTH2_PROXY_VERSION and test-idp (go build in scripts/front-door/)"
(cd "$MODULES/oauth2-proxy" && "$GO" build -mod=readonly -trimpath -ldflags "-s -w" -o "$work/bin/" \
    github.com/oauth2-proxy/oauth2-proxy/v7) || die "go build of oauth2-proxy failed (see above)"
(cd "$MODULES/test-idp" && "$GO" build -mod=readonly -trimpath -ldflags "-s -w" -o "$work/bin/" .) \
    || die "go build of test-idp failed (see above)"
rm -rf "${BIN%/bin}"
mv "$work" "${BIN%/bin}"
link_programs
log "built the front door's programs in $((SECONDS - start))s into $BIN"
