# x0tta6bl4 tasks. Run through ./dev.sh on a fresh machine (it installs just and the venv).

set shell := ["bash", "-euo", "pipefail", "-c"]

# list recipes
default:
    @just --list

# the whole test suite (what CI runs)
test *args:
    ruff check .
    python -m pytest -q -ra {{args}}

# lint only
lint:
    ruff check .
    ruff format --check .

# start a local 3-node mesh and open x0dash on it
demo nodes="3":
    x0dash --local {{nodes}}

# start a local mesh without the dashboard (Ctrl-C stops it)
mesh nodes="3" topology="full":
    x0-agent local-mesh --nodes {{nodes}} --topology {{topology}} --inventory run/inventory.json
