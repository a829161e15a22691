"""MAPE-K self-healing loop: monitor, analyze, plan, execute over shared knowledge (docs/contracts.md §3)."""
