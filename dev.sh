#!/bin/sh
# One entry point for a fresh Debian/Ubuntu machine: installs what is missing, then runs a `just` recipe.
#   ./dev.sh test    run the whole test suite
#   ./dev.sh demo    start a local 3-node mesh and open x0dash on it
#   ./dev.sh <recipe> [args]   any recipe of the justfile (`./dev.sh --list` lists them)
set -eu
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
VENV=${X0_VENV:-.venv}

need_py() {
    if ! command -v "$PY" >/dev/null 2>&1; then
        echo "dev.sh: $PY not found; install Python 3.11 or newer (apt-get install python3 python3-venv)" >&2
        exit 1
    fi
    if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "dev.sh: $("$PY" --version) is too old; x0tta6bl4 needs Python 3.11 or newer" >&2
        exit 1
    fi
}

system_packages() {
    # yggdrasil, prometheus/promtool and nft are real parts of the tests; only root can install them.
    missing=""
    command -v yggdrasil >/dev/null 2>&1 || [ -x /usr/sbin/yggdrasil ] || missing="$missing yggdrasil"
    command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
    command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || missing="$missing nftables"
    command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || missing="$missing iproute2"
    # x0dash's web view is tested in a real headless browser, its signal teardown in a real terminal (tmux).
    command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
    command -v tmux >/dev/null 2>&1 || missing="$missing tmux"
    # etcd is only the KV benchmark's side-by-side anchor (bench/kv_bench.py); tests and CI do not need it.
    if [ "${1:-}" = "kv-bench" ]; then
        command -v etcd >/dev/null 2>&1 || missing="$missing etcd-server"
    fi
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "dev.sh: installing$missing" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        # prometheus' postinst may try to start a service; that is harmless here.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    else
        echo "dev.sh: not root (or no apt-get): missing$missing; tests that need them will be skipped" >&2
    fi
}

python_env() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -m venv "$VENV"
    fi
    stamp="$VENV/.x0-installed"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ requirements.lock -nt "$stamp" ]; then
        # Exactly the releases of requirements.lock (pip, setuptools and uv included), each file checked against
        # its hash; `just deps-upgrade` renews the lock. Then the project itself, built by that locked setuptools
        # (--no-build-isolation): an isolated build would fetch a setuptools that no hash checks.
        "$VENV/bin/python" -m pip install -q --require-hashes -r requirements.lock
        "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
        touch "$stamp"
    fi
}

need_py
system_packages "$@"
python_env
case "$VENV" in /*) ;; *) VENV="$(pwd)/$VENV" ;; esac
PATH="$VENV/bin:$PATH"
export PATH
exec just "$@"
