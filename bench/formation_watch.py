"""What keeps a forming netns mesh from being "aware" (scale_bench's formation criterion: every agent holds every
member alive and has no open incident), polled from every agent's /mapek and /mapek/members every 0.5 s.

A diagnostic beside bench/scale_bench.py, which only says when formation ends: this says who suspects whom and
which incidents are open while it does not. Needs root, yggdrasil and nft, like every netns mesh.

    python bench/formation_watch.py --nodes 20 [--runs 3] [--env X0_SOMETHING=value ...]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from agent.localmesh import LocalMesh, MeshOptions

POLL_S = 0.5
SHOWN = 6  # agents shown per line


async def watch(nodes: int, env: dict[str, str], limit_s: float) -> float | None:
    run_dir = Path(tempfile.mkdtemp(prefix="x0-formation-"))
    opts = MeshOptions(
        nodes=nodes, mode="netns", run_dir=run_dir, log_level="warning", start_timeout=180.0, agent_env=env
    )
    mesh = LocalMesh(opts)
    t0 = time.monotonic()
    await asyncio.to_thread(mesh.start)
    print(f"  mesh.start returned after {time.monotonic() - t0:.1f} s", flush=True)
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=2.0) as http:

            async def one(node: Any) -> tuple[str, int | None, dict[str, int], list[str]]:
                try:
                    st = (await http.get(f"{node.agent_url}/mapek")).json()
                    members = (await http.get(f"{node.agent_url}/mapek/members")).json()["members"]
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    return node.id, None, {}, [f"unanswered: {type(exc).__name__}"]
                states = dict(collections.Counter(m["state"] for m in members))
                incidents = [f"{i['kind']}:{i.get('subject')}" for i in st.get("active_incidents", [])]
                return node.id, st.get("members_reachable"), states, incidents

            while time.monotonic() - t0 < limit_s:
                rows = await asyncio.gather(*(one(n) for n in mesh.nodes))
                at = time.monotonic() - t0
                behind = [r for r in rows if r[1] != nodes or r[3]]
                shown = "; ".join(f"{i} reachable={r} {s} {inc}" for i, r, s, inc in behind[:SHOWN])
                print(f"  t={at:5.1f} s: {len(behind):2d} not aware: {shown}", flush=True)
                if not behind:
                    return at
                await asyncio.sleep(POLL_S)
            return None
    finally:
        await asyncio.to_thread(mesh.stop)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=20, help="mesh size (default 20)")
    ap.add_argument("--runs", type=int, default=1, help="meshes formed one after the other (default 1)")
    ap.add_argument("--limit-s", type=float, default=90.0, help="give up on a run after this (default 90 s)")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="agent env, repeatable")
    args = ap.parse_args()
    try:
        env = dict(kv.split("=", 1) for kv in args.env)
    except ValueError:
        ap.error("--env takes KEY=VALUE")
    results = []
    for run in range(1, args.runs + 1):
        print(f"run {run}/{args.runs}: {args.nodes} nodes", flush=True)
        results.append(asyncio.run(watch(args.nodes, env, args.limit_s)))
    shown = ", ".join("never" if r is None else f"{r:.1f} s" for r in results)
    print(f"aware after (from mesh start): {shown}")
    return 0 if all(r is not None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
