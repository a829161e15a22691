# Variables for one `nomad agent -dev` (see nomad/README.md):
#   nomad job run -var-file=nomad/dev.vars.hcl nomad/mesh.nomad.hcl
# A system job would place exactly one node on the single dev client, so run a service job with three
# allocations instead. Ports stay dynamic (static ports would collide on one client) and node names come from
# the allocation index, since all three share one Nomad node name.
job_type  = "service"
instances = 3
node_name = "node-$${NOMAD_ALLOC_INDEX}"
