#!/usr/bin/env bash
# Rewrite the wrapper Go modules beside this file for new control-plane versions, then commit them.
#
#   scripts/control-plane/update-modules.sh KUBERNETES_VERSION KWOK_VERSION     e.g. v1.34.4 v0.7.0
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces every k8s.io staging module with a
# folder of its own repository. The kubernetes wrapper requires it and replaces each of those modules
# with its published v0.<minor>.<patch>; the list is read from the go.mod the module proxy serves for
# that version, never written by hand, and its `godebug` line is copied too. etcd is pinned to the
# version kubeadm (cmd/kubeadm/app/constants) pairs with that Kubernetes minor.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
LOG_TAG=control-plane
HERE="$ROOT/scripts/control-plane"

(($# == 2)) || die "usage: $0 KUBERNETES_VERSION KWOK_VERSION (e.g. v1.34.4 v0.7.0)"
k8s="$1" kwok="$2"
[[ "$k8s" =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || die "Kubernetes version '$k8s' is not of the form v1.MINOR.PATCH"
staging="v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"
minor="${BASH_REMATCH[1]}"
command -v go >/dev/null || die "no Go toolchain on PATH: install Go 1.24 or newer (Debian's golang-go is too old; see README)"

info="$(go mod download -json "k8s.io/kubernetes@$k8s")" || die "the Go module proxy ($(go env GOPROXY)) did not serve k8s.io/kubernetes@$k8s"
gomod="$(sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p' <<<"$info")"
srcdir="$(sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p' <<<"$info")"
[[ -f "$gomod" ]] || die "no go.mod for k8s.io/kubernetes@$k8s in the module cache"

etcd="$(sed -n "s/^\s*$minor: \"\([0-9.]*\)-[0-9]*\",\$/v\1/p" "$srcdir/cmd/kubeadm/app/constants/constants.go" | head -n 1)"
[[ -n "$etcd" ]] || die "kubeadm of $k8s names no etcd version for minor $minor"

write_module() { # DIR MODULE IMPORT...
    local dir="$HERE/$1" module="$2" imp
    shift 2
    mkdir -p "$dir"
    {
        printf '//go:build tools\n\n// Package tools pins the programs this module builds; scripts/build-control-plane.sh builds them.\npackage tools\n\nimport (\n'
        for imp in "$@"; do printf '\t_ "%s"\n' "$imp"; done
        printf ')\n'
    } >"$dir/tools.go"
    printf 'module %s\n\ngo 1.24.0\n' "$module" >"$dir/go.mod"
    rm -f "$dir/go.sum"
}

log "kubernetes $k8s (staging modules $staging), etcd $etcd (kubeadm's pairing), kwok $kwok"
write_module kubernetes hubploy-dagster/control-plane/kubernetes \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler
{
    echo
    grep '^godebug' "$gomod" || true
    echo
    echo "require k8s.io/kubernetes $k8s"
    echo
    echo "replace ("
    awk -v v="$staging" '$2 == "=>" && $3 ~ /^\.\/staging\/src\// { printf "\t%s => %s %s\n", $1, $1, v }' "$gomod"
    echo ")"
} >>"$HERE/kubernetes/go.mod"
write_module etcd hubploy-dagster/control-plane/etcd go.etcd.io/etcd/server/v3
printf '\nrequire go.etcd.io/etcd/server/v3 %s\n' "$etcd" >>"$HERE/etcd/go.mod"
write_module kwok hubploy-dagster/control-plane/kwok sigs.k8s.io/kwok/cmd/kwok
printf '\nrequire sigs.k8s.io/kwok %s\n' "$kwok" >>"$HERE/kwok/go.mod"

for dir in kubernetes etcd kwok; do
    log "go mod tidy in scripts/control-plane/$dir"
    (cd "$HERE/$dir" && go mod tidy) || die "go mod tidy failed in scripts/control-plane/$dir"
done
cat >"$HERE/versions" <<EOF
# The local control plane's pinned versions (sourced by scripts/build-control-plane.sh and
# scripts/control-plane/update-modules.sh). Change them with update-modules.sh, which rewrites the
# wrapper modules beside this file; etcd is the version kubeadm pairs with the Kubernetes minor.
KUBERNETES_VERSION=$k8s
ETCD_VERSION=$etcd
KWOK_VERSION=$kwok
EOF
log "done: commit scripts/control-plane/"
