"""Where x0dash learns which mesh nodes exist: local mesh, inventory file, or Nomad."""
