#!/usr/bin/env bash
# Create or update the local deployment repository .local/example-repo.git (bare) from the
# project's hubs/ and chart/ folders: they are copied into a temporary work tree as hubs/ and
# chart/, committed, and pushed to the branches `staging` and `prod`.
# Idempotent: when the content equals what `staging` holds, nothing is committed or pushed.
#   EXAMPLE_WITHOUT_HUB_API=1  turn each hub's hub_api check off in the copy (make run on the local
#                              cluster: its kwok node runs no JupyterHub, so no hub API can answer)
set -euo pipefail
LOG_TAG=example-repo
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

repo="$LOCAL_DIR/example-repo.git" # scripts/run-example.sh points HUBPLOY_REPO here
branches=(staging prod)

for d in hubs chart; do
    [[ -d "$ROOT/$d" ]] || die "$ROOT/$d/ is missing: the example deployment repository is made from hubs/ and chart/"
done
# Empty folders make no sense as an example (and git would not even record them).
[[ -n "$(ls -A "$ROOT/hubs")" ]] || die "$ROOT/hubs/ is empty: add at least one hub"
[[ -n "$(ls -A "$ROOT/chart")" ]] || die "$ROOT/chart/ is empty: the hubs' Helm chart belongs there"

git_id=(-c user.name="hubploy-dagster example" -c user.email="example@hubploy-dagster.invalid"
    -c commit.gpgsign=false)

if [[ ! -d "$repo" ]]; then
    log "creating bare repository $repo"
    mkdir -p "$(dirname "$repo")"
    git init -q --bare --initial-branch=staging "$repo" || die "git init --bare $repo failed"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if git --git-dir="$repo" rev-parse -q --verify refs/heads/staging >/dev/null; then
    git clone -q --branch staging "$repo" "$work" || die "git clone of $repo (branch staging) failed"
else
    git init -q --initial-branch=staging "$work"
    git -C "$work" remote add origin "$repo"
fi

# Replace the work tree's hubs/ and chart/ by the project's. Inside a git checkout, copy only
# files git would track (skips ignored ones: chart/charts/*.tgz, __pycache__, ...).
rm -rf "$work/hubs" "$work/chart"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    list="$work/.git/hubploy-files"
    git -C "$ROOT" ls-files -z --cached --others --exclude-standard -- hubs chart \
        | while IFS= read -r -d '' f; do
            if [[ -e "$f" || -L "$f" ]]; then printf '%s\0' "$f"; fi # skip files deleted but not committed
        done >"$list"
    tar -C "$ROOT" --null -T "$list" -cf - | tar -C "$work" -xf - \
        || die "copying hubs/ and chart/ into the work tree failed"
else
    cp -a "$ROOT/hubs" "$ROOT/chart" "$work/"
fi

if [[ "${EXAMPLE_WITHOUT_HUB_API:-0}" == 1 ]]; then
    for config in "$work"/hubs/*/hubploy.yaml; do
        grep -q '^health:' "$config" && die "$config has a health block: cannot turn its hub_api check off"
        printf '\n# make run on the local cluster: its node runs no JupyterHub, so no hub API can answer.\nhealth:\n  hub_api: {enabled: false}\n' >>"$config"
    done
fi
git -C "$work" add -A
if git -C "$work" rev-parse -q --verify HEAD >/dev/null && git -C "$work" diff --cached --quiet; then
    log "content unchanged since $(git -C "$work" rev-parse --short HEAD) on staging"
    changed=0
else
    src="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'no commit')"
    git -C "$work" "${git_id[@]}" commit -q -m "Update hubs/ and chart/ from hubploy-dagster ($src)" \
        || die "git commit in the work tree failed"
    log "committed $(git -C "$work" rev-parse --short HEAD)"
    changed=1
fi
new="$(git -C "$work" rev-parse HEAD)"

for b in "${branches[@]}"; do
    old="$(git --git-dir="$repo" rev-parse -q --verify "refs/heads/$b" || true)"
    if [[ "$old" == "$new" ]] || { [[ -n "$old" ]] && ((changed == 0)); }; then
        continue # already there, or nothing new to bring
    fi
    if [[ -n "$old" ]] && ! git -C "$work" merge-base --is-ancestor "$old" "$new" 2>/dev/null; then
        # Someone committed to this branch directly: do not throw that away.
        log "WARNING: $b has commits that are not on staging; left as is (remove $repo to start afresh)"
        continue
    fi
    git -C "$work" push -q origin "$new:refs/heads/$b" || die "git push to $b of $repo failed"
    log "pushed $(git -C "$work" rev-parse --short "$new") to $b"
done
log "ready: $repo"
