"""x0dash widgets, one module each."""
