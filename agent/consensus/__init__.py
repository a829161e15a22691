"""Consensus over the mesh: a Raft group of a few voters (pysyncobj) and a replicated key-value store that every
agent serves (docs/contracts.md §7). Voters keep a replica; every other agent is a client that forwards."""
