# Shared helpers for the scripts in this folder. Source it; do not run it.
# shellcheck shell=bash disable=SC2034  # the variables are for the scripts that source this

# Repository root: the parent of this scripts/ folder, whatever the caller's cwd.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL_DIR="$ROOT/.local"   # runtime state: logs, pidfiles, example repo, DAGSTER_HOME
TOOLS_BIN="$ROOT/.tools/bin"
VENV="$ROOT/.venv"

# Our pinned tools and the venv come first, as in the Makefile; sbin holds dockerd and
# may be missing from PATH in a non-login shell.
export PATH="$TOOLS_BIN:$VENV/bin:$PATH:/usr/local/sbin:/usr/sbin:/sbin"

log() { printf '[%s] %s\n' "${LOG_TAG:-setup}" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "${LOG_TAG:-setup}" "$*" >&2; exit 1; }

# GO: the go command (default: go on PATH, else /usr/local/go/bin/go, where Go's official tarball installs),
# checked to be 1.MINOR or newer. require_go MINOR WHAT (WHAT: what is built, for the error messages).
require_go() {
    GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
    [[ -x "$GO" ]] \
        || die "no Go toolchain ($GO not found): $2 is built from Go modules. Install Go 1.$1 or newer (the official tarball, or a distribution's package of that version), put its bin on PATH or set GO to its go command"
    local minor
    minor="$("$GO" env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')"
    ((${minor:-0} >= $1)) || die "Go $("$GO" env GOVERSION) is too old: $2 needs Go 1.$1 or newer"
}
