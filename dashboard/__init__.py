"""x0dash: the terminal dashboard for an x0tta6bl4 mesh."""
