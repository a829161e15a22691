# Variables for one `nomad agent -dev` (see nomad/README.md):
#   nomad job run -var-file=nomad/dev.vars.hcl nomad/mesh.nomad.hcl
# A system job would place exactly one node on the single dev client, so run a service job with three
# allocations instead. Ports stay dynamic (static ports would collide on one client) and node names come from
# the allocation index, since all three share one Nomad node name.
job_type  = "service"
instances = 3
node_name = "node-$${NOMAD_ALLOC_INDEX}"
# One host: the dev agent binds 127.0.0.1, so the agents' URLs are loopback and the token may travel there anyway;
# said explicitly in case the dev agent is bound to another address of this host.
allow_clear_underlay = true
