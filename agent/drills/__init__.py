"""Drill faults on the agent: nftables partition/blackhole in its own namespace, kill-daemon via the supervisor."""
