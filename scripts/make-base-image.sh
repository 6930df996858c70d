#!/usr/bin/env bash
# Make the local base image hubploy-dagster/base:busybox without any image registry
# (Docker Hub is unreachable here): a root filesystem holding Debian's static busybox
# and its applet symlinks, imported with `docker import`. Skipped when the image exists.
set -euo pipefail
LOG_TAG=base-image
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

image="${BASE_IMAGE:-hubploy-dagster/base:busybox}"
busybox=/bin/busybox

if docker image inspect "$image" >/dev/null 2>&1; then
    log "$image already exists"
    exit 0
fi

# It must be the static build (Debian busybox-static): the image has no libc.
ldd_out="$(LC_ALL=C ldd "$busybox" 2>&1 || true)"
[[ -x "$busybox" && "$ldd_out" == *"not a dynamic executable"* ]] \
    || die "$busybox is missing or not statically linked (install Debian package busybox-static)"

rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT

mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,var/tmp}
chmod 1777 "$rootfs/tmp" "$rootfs/var/tmp"
cp "$busybox" "$rootfs/bin/busybox"
# Same links as `busybox --install -s`, but pointing at /bin/busybox inside the image
# (--install would link to this host's path of the binary).
while read -r applet; do
    [[ -e "$rootfs/$applet" || -L "$rootfs/$applet" ]] && continue
    mkdir -p "$rootfs/$(dirname "$applet")"
    ln -s /bin/busybox "$rootfs/$applet"
done < <("$busybox" --list-full)
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"

log "importing $image from $busybox ($("$busybox" | head -n 1))"
tar --numeric-owner --owner=0 --group=0 -C "$rootfs" -c . \
    | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/sh"]' \
        - "$image" >/dev/null \
    || die "docker import of $image failed"

# Prove the image runs (default bridge network, see scripts/start-dockerd.sh).
out="$(docker run --rm "$image" sh -c 'echo ok' 2>&1)" \
    || die "docker run --rm $image failed: $out"
[[ "$out" == ok ]] || die "docker run --rm $image printed '$out' instead of 'ok'"
log "$image ready"
