# x0tta6bl4 tasks. Run through ./dev.sh on a fresh machine (it installs just and the venv).

set shell := ["bash", "-euo", "pipefail", "-c"]

# list recipes
default:
    @just --list

# the whole test suite (what CI runs)
test *args:
    ruff check .
    python -m pytest -q -ra {{args}}

# What dev.sh and CI install (hash-checked); also to run after editing pyproject.toml's dependencies.
# re-resolve requirements.lock: all to the newest releases allowed, or only those named (`just deps-upgrade httpx`)
deps-upgrade *packages:
    uv pip compile -q pyproject.toml --all-extras --group pyproject.toml:tooling --universal --python-version 3.11 \
        --generate-hashes --custom-compile-command "just deps-upgrade" -o requirements.lock \
        {{ if packages == "" { "--upgrade" } else { "--upgrade-package " + replace(packages, " ", " --upgrade-package ") } }}
    @git diff -U0 -- requirements.lock | grep -E '^[-+][A-Za-z0-9]' || echo "requirements.lock: no release changed"

# lint only
lint:
    ruff check .
    ruff format --check .

# start a local 3-node mesh and open x0dash on it
demo nodes="3":
    x0dash --local {{nodes}}

# start a local mesh without the dashboard (Ctrl-C stops it); extra args go to local-mesh, e.g. `just mesh 3 ring --loopback`
mesh nodes="3" topology="full" *args:
    x0-agent local-mesh --nodes {{nodes}} --topology {{topology}} --inventory run/inventory.json {{args}}

# agent HTTP speed vs a minimal Litestar app, and agent memory (needs wrk); e.g. `just agent-bench --rss-after 600`
agent-bench *args:
    python bench/agent_http.py {{args}}

# x0dash: poll cycle over 100 agents, key-to-screen latency while polling, memory, vs a bare-httpx baseline
dash-bench *args:
    python bench/dash_poll.py {{args}}

# replicated KV store vs a 3-member etcd on the same netns mesh (root, etcd-server): writes/s, p50/p99, reads/s, failover, RSS
kv-bench *args:
    python bench/kv_bench.py {{args}}

# self-healing: detect/repair times with MAPE-K vs the daemons alone (root); e.g. `just heal-bench --runs 3`
heal-bench *args:
    python bench/heal_bench.py {{args}}

# heal at scale (root): formation, idle CPU per agent/daemon, drills (first detection, full awareness, worst repair) at N = 3, 10, 20; e.g. `just scale-bench --sizes 3,20 --runs 1`
scale-bench *args:
    python bench/scale_bench.py {{args}}

# SWIM and MAPE-K of the agents at 20, 100 and 1,000 members on a simulated network: awareness time and messages per node vs N (the README table)
swim-sim *args:
    python bench/swim_sim.py {{args}}

# remove what crashed local meshes left behind (namespaces, veths, bridges, processes, sockets)
mesh-cleanup:
    x0-agent local-mesh --cleanup

# start `nomad agent -dev`, run the mesh job (3 nodes) and open x0dash on it (needs the nomad binary)
nomad-dev:
    nomad/dev-up.sh

# local mesh + a real Prometheus (prometheus/prometheus.yml) scraping it; prints where to look and how to add Grafana
observe nodes="3" *args:
    python prometheus/observe.py --nodes {{nodes}} {{args}}

# Whole suite (agents and x0dash started as processes included), then the pure-logic tests alone (X0_TESTS_PURE=1).
# line coverage; fails under 85 % (agent/mapek, agent/drills, dashboard/drills) or 70 % (agent/mapek, pure-logic)
coverage *args:
    #!/usr/bin/env bash
    set -uo pipefail
    rm -f .coverage-suite .coverage-suite.* .coverage-pure .coverage-pure.*
    status=0
    COVERAGE_FILE=$PWD/.coverage-suite python -m coverage run -m pytest -q -ra -p no:cacheprovider {{args}} || status=$?
    COVERAGE_FILE=$PWD/.coverage-pure X0_TESTS_PURE=1 python -m coverage run -m pytest -q -p no:cacheprovider {{args}} || status=$?
    python -m coverage combine -q --data-file=.coverage-suite
    python -m coverage combine -q --data-file=.coverage-pure
    echo; echo "== whole suite"
    python -m coverage report --data-file=.coverage-suite | grep "^TOTAL"
    for pkg in agent/mapek agent/drills dashboard/drills; do
        echo "== whole suite, $pkg (>= 85 %)"
        python -m coverage report --data-file=.coverage-suite --include="$pkg/*" --fail-under=85 || status=1
    done
    echo "== pure-logic tests alone, agent/mapek (>= 70 %)"
    python -m coverage report --data-file=.coverage-pure --include="agent/mapek/*" --fail-under=70 || status=1
    exit $status

# 30 minutes of mixed load on a 3-node mesh (readers, a drill every 2 min, members churn): RSS/fds/errors/leftovers; run it under x0-test, e.g. `just soak --minutes 5`
soak *args:
    python bench/soak.py {{args}}

# agent /health with a members file of 1,000 members, and fake peers left dialled after it is restored (issue 11)
members-bench *args:
    python bench/large_members.py {{args}}

# hostile HTTP clients (slow headers, thousands of idle connections) against a real agent (issue 11)
floods-bench *args:
    python bench/http_floods.py {{args}}
