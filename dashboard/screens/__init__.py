"""x0dash screens, one module each."""
