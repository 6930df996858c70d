#!/usr/bin/env bash
# Fill .local/wheelhouse with wheels of every runtime dependency of the package (pyproject.toml, without
# the test extras) and of its build backend, so that deploy/Dockerfile installs with `pip install --no-index`
# and its build needs no network. Built with the venv's pip and Python 3.11 on Debian 12 x86-64, the same
# platform as the image's base (scripts/make-python-base-image.sh), at the versions installed in the venv
# (the ones the tests ran with). Redone only when pyproject.toml changed.
set -euo pipefail
LOG_TAG=wheelhouse
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

wheelhouse="$LOCAL_DIR/wheelhouse"
stamp="$wheelhouse/.pyproject.sha256"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    log "$wheelhouse up to date with pyproject.toml"
    exit 0
fi
python="$VENV/bin/python"
"$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || die "$python is not Python 3.11 (run scripts/setup.sh venv)"

mkdir -p "$LOCAL_DIR"
tmp="$(mktemp -d "$LOCAL_DIR/wheelhouse.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
# The dependencies and the build backend by name (building the package itself would leave build/ behind):
# the image installs the package from its source.
requirements="$("$python" -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); print("\n".join(p["project"]["dependencies"] + p["build-system"]["requires"]))')"
mapfile -t requirements <<<"$requirements"
"$python" -m pip freeze --exclude-editable >"$tmp/venv-versions.txt"
log "pip wheel: ${#requirements[@]} requirements at the venv's versions into $wheelhouse"
"$python" -m pip wheel -q --constraint "$tmp/venv-versions.txt" --wheel-dir "$tmp" "${requirements[@]}" \
    || die "pip wheel of the package's requirements failed"
rm "$tmp/venv-versions.txt"
echo "$want" >"$tmp/.pyproject.sha256"
rm -rf "$wheelhouse"
mv "$tmp" "$wheelhouse"
log "$wheelhouse: $(find "$wheelhouse" -name '*.whl' | wc -l) wheels"
