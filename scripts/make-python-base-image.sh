#!/usr/bin/env bash
# Make the local base image of the code-location image, hubploy-dagster/python-base:bookworm, without any
# image registry (Docker Hub is unreachable here): a Debian bookworm minbase root filesystem made with
# debootstrap from the mirror apt is configured with, holding python3 (3.11), python3-venv, git and
# ca-certificates, imported with `docker import`. Skipped when the image exists. About a minute.
#
#   PYTHON_BASE_IMAGE   image name (default hubploy-dagster/python-base:bookworm)
#   DEBIAN_MIRROR       mirror (default: the first http(s) URI of /etc/apt/sources.list{,.d/*})
set -euo pipefail
LOG_TAG=python-base-image
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

image="${PYTHON_BASE_IMAGE:-hubploy-dagster/python-base:bookworm}"
suite=bookworm
packages=python3,python3-venv,git,ca-certificates

if docker image inspect "$image" >/dev/null 2>&1; then
    log "$image already exists"
    exit 0
fi
((EUID == 0)) || die "debootstrap needs root"
command -v debootstrap >/dev/null || die "debootstrap not found (Debian package debootstrap; scripts/setup.sh apt installs it)"

# The Debian archive apt uses: a deb822 `URIs:` line (debian.sources) or a one-line `deb URI suite ...`,
# the archive that carries the suite itself (not -security).
apt_mirror() {
    local files=() f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
        [[ -f "$f" ]] && files+=("$f")
    done
    ((${#files[@]})) || return 1
    awk -v suite="$suite" '
        /^[[:space:]]*#/ { next }
        /^URIs:/ { uri = $2; next }
        /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite && uri != "") { print uri; exit } next }
        /^deb[[:space:]]/ { u = ($2 ~ /^\[/) ? $3 : $2; s = ($2 ~ /^\[/) ? $4 : $3; if (s == suite) { print u; exit } }
    ' "${files[@]}"
}
mirror="${DEBIAN_MIRROR:-$(apt_mirror || true)}"
[[ -n "$mirror" ]] || die "no Debian mirror for $suite in /etc/apt/sources.list{,.d/*}; set DEBIAN_MIRROR"

rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs" "$rootfs.log"' EXIT

log "debootstrap --variant=minbase $suite from $mirror (+ $packages)"
debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
    || { tail -n 20 "$rootfs.log" >&2; die "debootstrap failed (last lines above)"; }
# Smaller image: no package lists or downloaded .debs (apt-get update restores the lists when needed).
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*

version="$(chroot "$rootfs" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[[ "$version" == 3.11 ]] || die "$suite's python3 is $version, the project needs 3.11"

log "importing $image (python $version)"
tar --numeric-owner -C "$rootfs" -c . \
    | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        - "$image" >/dev/null \
    || die "docker import of $image failed"

out="$(docker run --rm "$image" python3 -c 'import ssl, venv; print("ok")' 2>&1)" \
    || die "docker run --rm $image failed: $out"
[[ "$out" == ok ]] || die "docker run --rm $image printed '$out' instead of 'ok'"
log "$image ready"
