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
