#!/usr/bin/env bash
# `just nomad-dev`: a throw-away `nomad agent -dev`, the mesh job (3 nodes) on it, and x0dash watching it.
# Everything stops (and the dev agent destroys its allocations) when x0dash exits or on Ctrl-C.
#   NOMAD_DEV_PORT=4646  HTTP port of the dev agent     X0DASH_ARGS=...  extra x0dash options
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nomad >/dev/null 2>&1; then
    cat >&2 <<'MSG'
nomad-dev: the `nomad` binary is not installed (or not on PATH).
Install Nomad 1.4 or newer (native service checks), then run `just nomad-dev` again:
  - Debian/Ubuntu: add HashiCorp's apt repository (https://developer.hashicorp.com/nomad/install),
    then `sudo apt-get install nomad`
  - or download the zip for your platform from https://releases.hashicorp.com/nomad/ and put `nomad` on PATH
Without Nomad, `just demo` runs the same mesh locally (x0dash --local 3).
MSG
    exit 127
fi

port="${NOMAD_DEV_PORT:-4646}"
addr="http://127.0.0.1:${port}"
run_dir="run/nomad-dev"
mkdir -p "$run_dir"
agent_bin="$(command -v x0-agent || true)"
ygg_bin="$(command -v yggdrasil || echo /usr/sbin/yggdrasil)"
if [ -z "$agent_bin" ]; then
    echo "nomad-dev: x0-agent is not on PATH; run through ./dev.sh (it installs the virtualenv)" >&2
    exit 1
fi
if curl -fsS "${addr}/v1/status/leader" >/dev/null 2>&1; then
    echo "nomad-dev: something already answers on ${addr}; stop it or set NOMAD_DEV_PORT" >&2
    exit 1
fi

# TUN interfaces need root; an unprivileged dev agent runs the daemons router-only.
ifname="auto"
[ "$(id -u)" = 0 ] || ifname="none"

printf 'ports {\n  http = %s\n}\n' "$port" >"$run_dir/agent.hcl"
nomad agent -dev -bind 127.0.0.1 -config "$run_dir/agent.hcl" >"$run_dir/nomad.log" 2>&1 &
nomad_pid=$!
cleanup() {
    # SIGINT: the dev agent shuts down gracefully and destroys its allocations (reference/nomad.md §3.1).
    kill -INT "$nomad_pid" 2>/dev/null || true
    wait "$nomad_pid" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

export NOMAD_ADDR="$addr"
for _ in $(seq 1 60); do
    curl -fsS "${addr}/v1/status/leader" 2>/dev/null | grep -q ':' && break
    if ! kill -0 "$nomad_pid" 2>/dev/null; then
        echo "nomad-dev: nomad agent -dev exited; see $run_dir/nomad.log" >&2
        exit 1
    fi
    sleep 0.5
done

# The agents' API token lives in a Nomad variable the job's tasks may read; never in the job file.
token="$(python3 -c 'import secrets; print(secrets.token_hex(24))')"
nomad var put -force nomad/jobs/x0-mesh api_token="$token" >/dev/null

nomad job run -detach -var-file=nomad/dev.vars.hcl \
    -var "agent_bin=${agent_bin}" -var "yggdrasil_bin=${ygg_bin}" -var "yggdrasil_ifname=${ifname}" \
    nomad/mesh.nomad.hcl
if [ -f nomad/monitoring.nomad.hcl ]; then
    nomad job run -detach nomad/monitoring.nomad.hcl || echo "nomad-dev: monitoring job not started" >&2
fi

# shellcheck disable=SC2086 # X0DASH_ARGS is a list of options
x0dash --nomad "$addr" --job x0-mesh ${X0DASH_ARGS:-}
