#!/usr/bin/env bash
# Build the local Kubernetes control plane from Go modules (pinned in scripts/control-plane/) and link
# the programs into .tools/bin: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok.
#
# The binaries live outside the work tree, in a folder keyed by the versions and the modules' go.sum
# (HUBPLOY_CONTROL_PLANE_CACHE, default ~/.cache/hubploy-dagster/control-plane), so a second set-up, or
# another clone, takes a second. The first build downloads the modules through the Go module proxy
# and compiles for several minutes (the README gives the figures measured).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LOG_TAG=control-plane
MODULES="$ROOT/scripts/control-plane"
# shellcheck source=scripts/control-plane/versions
source "$MODULES/versions"

PROGRAMS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
key="k8s-$KUBERNETES_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION-$(cat "$MODULES"/*/go.sum | sha256sum | cut -c1-12)"
CACHE="${HUBPLOY_CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hubploy-dagster/control-plane}"
BIN="$CACHE/$key/bin"

link_programs() {
    mkdir -p "$TOOLS_BIN"
    local p
    for p in "${PROGRAMS[@]}"; do ln -sfn "$BIN/$p" "$TOOLS_BIN/$p"; done
}

if [[ -x "$BIN/kwok" && -x "$BIN/kube-apiserver" ]]; then
    link_programs
    log "control plane $KUBERNETES_VERSION (etcd $ETCD_VERSION, kwok $KWOK_VERSION) present in $BIN"
    exit 0
fi

require_go 24 "the control plane (Kubernetes $KUBERNETES_VERSION)"
"$GO" mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" >/dev/null 2>&1 \
    || die "the Go module proxy (GOPROXY=$("$GO" env GOPROXY)) did not serve k8s.io/kubernetes@$KUBERNETES_VERSION: the build downloads its modules from it; set GOPROXY to a proxy you can reach"

work="$CACHE/$key.building.$$"
rm -rf "$work"
mkdir -p "$work/bin"
cleanups=("rm -rf '$work'")
trap 'eval "${cleanups[@]}"' EXIT

minor="$(sed -n 's/^v1\.\([0-9]*\)\..*/\1/p' <<<"$KUBERNETES_VERSION")"
stamp=()
for var in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    stamp+=("-X" "$var.gitVersion=$KUBERNETES_VERSION" "-X" "$var.gitMajor=1" "-X" "$var.gitMinor=$minor"
        "-X" "$var.gitTreeState=clean")
done

build() { # MODULE-DIR LDFLAGS PACKAGE...
    local dir="$1" ldflags="$2"
    shift 2
    log "building $* (go build in scripts/control-plane/$dir)"
    (cd "$MODULES/$dir" && "$GO" build -mod=readonly -trimpath -ldflags "$ldflags" -o "$work/bin/" "$@") \
        || die "go build of $* failed (see above)"
}

start=$SECONDS
build kubernetes "-s -w ${stamp[*]}" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler
build etcd "-s -w" go.etcd.io/etcd/server/v3
mv "$work/bin/server" "$work/bin/etcd" # go names a binary after the path element before /v3
build kwok "-s -w" sigs.k8s.io/kwok/cmd/kwok

version="$("$work/bin/kube-apiserver" --version)"
[[ "$version" == "Kubernetes $KUBERNETES_VERSION" ]] || die "kube-apiserver --version says '$version', not 'Kubernetes $KUBERNETES_VERSION'"
rm -rf "${BIN%/bin}"
mv "$work" "${BIN%/bin}"
cleanups=()
link_programs
log "built the control plane in $((SECONDS - start))s into $BIN ($(du -sh "$BIN" | cut -f1))"
