# x0tta6bl4 mesh: one Yggdrasil daemon + one x0-agent per Nomad client.
#
#   nomad job run nomad/mesh.nomad.hcl                                  # cluster: system job, one node per client
#   nomad job run -var-file=nomad/dev.vars.hcl nomad/mesh.nomad.hcl     # one `nomad agent -dev`: 3 nodes
#
# See nomad/README.md for the variables, the API token variable and the dev walk-through.
#
# Design notes (why, not what):
# - The daemon runs as its own prestart *sidecar* task. Its config has no Peers: the agent plans links from the
#   members file and adds them with addPeer at runtime. Yggdrasil (0.4.7 and 0.5.x) has no SIGHUP reload, so the
#   daemon config is never re-rendered from mesh membership. Only peer admission needs a restart (a joining
#   member's key, published in the replicated store): run-yggdrasil.sh restarts the daemon when the agent asks.
# - The members file is rendered from `nomadService` lookups with change_mode = "noop": the agent re-reads it when
#   its mtime/size changes (docs/contracts.md §2). The default change_mode = "restart" would restart every agent
#   each time any peer's registration changes, which cascades across the whole mesh.
# - Keys: the private key is generated once per allocation into alloc/data (the ephemeral disk) and merged into
#   the rendered config at start. A task restart, an `alloc restart` or a client restart keep the alloc dir, and
#   `ephemeral_disk { sticky = true }` carries alloc/data over to the replacement allocation on the same client
#   when the job is updated. `nomad alloc stop` discards it (Nomad documents that stopped allocations are not
#   migrated); the node then comes back with a new key, which the agents learn (the members file carries no keys).
#   A Nomad variable would survive even that, but a task's workload identity can only *read* variables, so keys
#   would have to be pre-provisioned per client by an operator; the alloc dir needs nobody.

variable "datacenters" {
  type        = list(string)
  default     = ["*"]
  description = "Datacenters to run mesh nodes in."
}

variable "job_type" {
  type        = string
  default     = "system"
  description = "\"system\" (one mesh node per eligible client) or \"service\" (var.instances nodes; one dev agent)."
}

variable "instances" {
  type        = number
  default     = 3
  description = "Mesh nodes when job_type = \"service\" (a system job always runs one per client)."
}

variable "node_name" {
  type = string
  # Runtime-interpolated by the Nomad client: `$${` keeps the `${...}` literal through HCL parsing. The agent's
  # NODE_ID is this value lower-cased with runs of other characters turned into "-" (see local.node_id).
  default     = "$${node.unique.name}"
  description = "Raw mesh node name; dev uses \"node-$${NOMAD_ALLOC_INDEX}\" since all nodes share one client."
}

variable "driver" {
  type        = string
  default     = "raw_exec"
  description = "\"raw_exec\" (binaries installed on the clients) or \"docker\" (var.image)."
}

variable "image" {
  type        = string
  default     = ""
  description = "Docker image with x0-agent, yggdrasil and /bin/sh (driver = \"docker\" only)."
}

variable "agent_bin" {
  type        = string
  default     = "/usr/local/bin/x0-agent"
  description = "Path of x0-agent on the clients (raw_exec) or in the image (docker)."
}

variable "yggdrasil_bin" {
  type        = string
  default     = "/usr/sbin/yggdrasil"
  description = "Path of yggdrasil on the clients (raw_exec) or in the image (docker)."
}

variable "yggdrasil_ifname" {
  type        = string
  default     = "auto"
  description = "Yggdrasil TUN interface: \"auto\" needs root/NET_ADMIN; \"none\" runs router-only (no overlay IP)."
}

variable "api_port" {
  type        = number
  default     = 0
  description = "Static host port for the agent API; 0 = dynamic (required when several nodes share a client)."
}

variable "peer_port" {
  type        = number
  default     = 0
  description = "Static host port for Yggdrasil peering (tls://); 0 = dynamic."
}

variable "raft_port" {
  type        = number
  default     = 0
  description = "Static host port for the agent's Raft listener (X0_RAFT_PORT); 0 = dynamic."
}

variable "log_level" {
  type    = string
  default = "info"
}

variable "agent_resources" {
  type        = object({ cpu = number, memory = number })
  default     = { cpu = 200, memory = 192 }
  description = "CPU (MHz) and memory (MB) of the agent task."
}

variable "topology" {
  type        = string
  default     = "auto"
  description = "Planned links the agents derive from the members (docs/contracts.md §2): auto (full up to 8 nodes, expander above: at most 4 links per node, diameter ~log N), full, ring, chain or expander."
}

variable "allow_clear_underlay" {
  type        = bool
  default     = false
  description = "Let the agents accept mutating requests (they carry the API token) in clear HTTP over the underlay (X0_ALLOW_CLEAR_UNDERLAY). Keep false on a real cluster: give the agents a TLS certificate (tls_cert/tls_key in the job's Nomad variable, see nomad/README.md) instead."
}

variable "yggdrasil_resources" {
  type        = object({ cpu = number, memory = number })
  default     = { cpu = 100, memory = 96 }
  description = "CPU (MHz) and memory (MB) of the yggdrasil task."
}

locals {
  agent_service = "x0-mesh-agent"
  peer_service  = "x0-mesh-yggdrasil"
  # The API token lives in a Nomad variable that every task of this job may read (workload identity default
  # policy): `nomad var put nomad/jobs/x0-mesh api_token=...`. It is never written in this file.
  token_var = "nomad/jobs/x0-mesh"
  # Go-template pipeline turning a raw node name into a contracts §1 NODE_ID ([a-z0-9][a-z0-9-]{0,62}). Used by
  # the agent's own env template and for every peer in the members template, so both sides agree.
  node_id = "toLower | regexReplaceAll \"[^a-z0-9-]+\" \"-\" | regexReplaceAll \"^-+\" \"\" | printf \"%.63s\""
}

job "x0-mesh" {
  type        = var.job_type
  datacenters = var.datacenters

  # The daemon needs a TUN device and the agent reads /proc; both are Linux-only.
  constraint {
    attribute = "$${attr.kernel.name}"
    value     = "linux"
  }

  # One node at a time, each proven healthy by its checks, so an update never takes the whole mesh down.
  # System jobs get deployments (and so auto_revert) from Nomad 1.11; older versions honour max_parallel.
  update {
    max_parallel      = 1
    health_check      = "checks"
    min_healthy_time  = "10s"
    healthy_deadline  = "3m"
    progress_deadline = "10m"
    auto_revert       = true
  }

  group "node" {
    # System jobs accept only 0 or 1 here; the dev variant runs var.instances copies on one client.
    count = var.job_type == "system" ? 1 : var.instances

    network {
      port "api" {
        static = var.api_port
      }
      port "peer" {
        static = var.peer_port
      }
      # Raft between the agents that vote (docs/contracts.md §7); published as a tag so the members template
      # can write each member's raft_address.
      port "raft" {
        static = var.raft_port
      }
    }

    # System allocations are never rescheduled elsewhere, so "fail" would leave a node dead until the next job
    # update; "delay" keeps retrying on the same client.
    restart {
      attempts = 5
      interval = "5m"
      delay    = "5s"
      mode     = "delay"
    }

    # Keeps alloc/data (the Yggdrasil key) across job updates on the same client; see the header.
    ephemeral_disk {
      sticky = true
    }

    task "yggdrasil" {
      lifecycle {
        hook    = "prestart"
        sidecar = true
      }

      driver = var.driver

      dynamic "config" {
        for_each = var.driver == "docker" ? [] : [1]
        content {
          command = "/bin/sh"
          args    = ["$${NOMAD_TASK_DIR}/run-yggdrasil.sh"]
        }
      }
      dynamic "config" {
        for_each = var.driver == "docker" ? [1] : []
        content {
          image        = var.image
          command      = "/bin/sh"
          args         = ["/local/run-yggdrasil.sh"]
          network_mode = "host"
          cap_add      = ["NET_ADMIN"]
          devices = [
            {
              host_path      = "/dev/net/tun"
              container_path = "/dev/net/tun"
            },
          ]
        }
      }

      env {
        YGGDRASIL_BIN = var.yggdrasil_bin
      }

      # Daemon config without the private key (merged in by run-yggdrasil.sh) and without Peers. It only depends
      # on this allocation's own environment, so it never re-renders while the task runs; if an operator changes
      # it through a job update, only this task restarts and the agent re-adds its peers.
      template {
        destination = "local/yggdrasil.conf.in"
        change_mode = "restart"
        data        = <<-EOT
          {
            "Listen": ["tls://{{ env "NOMAD_ADDR_peer" }}"],
            "AdminListen": "unix://{{ env "NOMAD_ALLOC_DIR" }}/yggdrasil.sock",
            "Peers": [],
            "InterfacePeers": {},
            "MulticastInterfaces": [],
            "AllowedPublicKeys": "@X0_ALLOWED_KEYS@",
            "IfName": "${var.yggdrasil_ifname}",
            "IfMTU": 65535,
            "NodeInfoPrivacy": false,
            "NodeInfo": null,
            "PrivateKey": "@X0_PRIVATE_KEY@"
          }
        EOT
      }

      # Plain shell (no template actions). Generates the key once into alloc/data, writes the full config to
      # secrets/ (0600) and runs the daemon. Peer admission (docs/contracts.md §1): the agent keeps the keys the
      # daemon is to admit in alloc/data/allowed-keys.json (from the members' keys published in the replicated
      # store) and, since the daemon reads AllowedPublicKeys only at start, asks for a restart by creating
      # allowed-keys.json.restart; the script then restarts the daemon with the new list and records in
      # allowed-keys.json.running what the running daemon admits. A daemon that exits on its own ends the task
      # with its status (Nomad's restart policy applies); SIGTERM/SIGINT stop the daemon and end the task.
      template {
        destination = "local/run-yggdrasil.sh"
        perms       = "0755"
        change_mode = "restart"
        data        = <<-EOT
          #!/bin/sh
          set -eu
          bin="$${YGGDRASIL_BIN:-yggdrasil}"
          keyfile="$NOMAD_ALLOC_DIR/data/yggdrasil.key"
          allow="$NOMAD_ALLOC_DIR/data/allowed-keys.json"
          umask 077
          if [ ! -s "$keyfile" ]; then
            "$bin" -genconf -json \
              | sed -n 's/^[[:space:]]*"PrivateKey":[[:space:]]*"\([0-9a-f]*\)".*/\1/p' >"$keyfile.new"
            if [ ! -s "$keyfile.new" ]; then
              echo "run-yggdrasil: '$bin -genconf -json' printed no PrivateKey" >&2
              exit 1
            fi
            mv "$keyfile.new" "$keyfile"
          fi
          key=$(cat "$keyfile")
          pid=""
          watcher=""
          stop() {
            [ -z "$watcher" ] || kill "$watcher" 2>/dev/null || :
            if [ -n "$pid" ]; then
              kill -TERM "$pid" 2>/dev/null || :
              wait "$pid" 2>/dev/null || :
            fi
            exit 0
          }
          trap stop TERM INT
          while :; do
            # Only a list of keys goes into the config; anything else in the file admits everyone, as the
            # agent's report says until it has written a list.
            keys=$(cat "$allow" 2>/dev/null | tr -d ' \t\r\n')
            printf '%s' "$keys" | grep -Eq '^\[("[0-9a-f]{64}"(,"[0-9a-f]{64}")*)?\]$' || keys='[]'
            sed -e "s/@X0_PRIVATE_KEY@/$key/" -e "s/\"@X0_ALLOWED_KEYS@\"/$keys/" \
              "$NOMAD_TASK_DIR/yggdrasil.conf.in" >"$NOMAD_SECRETS_DIR/yggdrasil.conf"
            # A daemon killed hard leaves its admin socket behind (reference/yggdrasil.md).
            rm -f "$NOMAD_ALLOC_DIR/yggdrasil.sock" "$allow.restart"
            printf '%s\n' "$keys" >"$allow.running"
            "$bin" -useconffile "$NOMAD_SECRETS_DIR/yggdrasil.conf" &
            pid=$!
            (
              while [ ! -e "$allow.restart" ]; do
                sleep 1
                kill -0 "$pid" 2>/dev/null || exit 0
              done
              echo "run-yggdrasil: restarting yggdrasil: $(cat "$allow.restart" 2>/dev/null)" >&2
              kill -TERM "$pid" 2>/dev/null || :
            ) &
            watcher=$!
            rc=0
            wait "$pid" || rc=$?
            pid=""
            kill "$watcher" 2>/dev/null || :
            wait "$watcher" 2>/dev/null || :
            watcher=""
            if [ ! -e "$allow.restart" ]; then
              echo "run-yggdrasil: yggdrasil exited with status $rc" >&2
              exit "$rc"
            fi
          done
        EOT
      }

      service {
        provider = "nomad"
        name     = local.peer_service
        port     = "peer"
        tags     = ["x0-mesh", "x0-node=${var.node_name}"]

        check {
          name     = "peering listener"
          type     = "tcp"
          interval = "10s"
          timeout  = "2s"
        }
      }

      resources {
        cpu    = var.yggdrasil_resources.cpu
        memory = var.yggdrasil_resources.memory
      }
    }

    task "agent" {
      driver = var.driver

      dynamic "config" {
        for_each = var.driver == "docker" ? [] : [1]
        content {
          command = var.agent_bin
          args    = ["serve"]
        }
      }
      dynamic "config" {
        for_each = var.driver == "docker" ? [1] : []
        content {
          image        = var.image
          command      = var.agent_bin
          args         = ["serve"]
          network_mode = "host"
        }
      }

      env {
        LISTEN_PORT     = "$${NOMAD_PORT_api}"
        YGGDRASIL_ADMIN = "unix://$${NOMAD_ALLOC_DIR}/yggdrasil.sock"
        MESH_MEMBERS    = "$${NOMAD_TASK_DIR}/members.json"
        X0_RAFT_PORT    = "$${NOMAD_PORT_raft}"
        # alloc/data is sticky (ephemeral_disk above): a restarted task or a replaced allocation on the same
        # client keeps its Raft journal and catches up from there.
        X0_RAFT_DIR = "$${NOMAD_ALLOC_DIR}/data/raft"
        # Raft between the voters rides the overlay (docs/contracts.md §7): the agents learn each other's Yggdrasil
        # addresses from their agents, since the members file carries none. Router-only daemons have no overlay
        # address to bind: then Raft uses each member's raft_address, on the underlay.
        X0_RAFT_TRANSPORT = var.yggdrasil_ifname == "none" ? "auto" : "overlay"
        LOG_LEVEL       = var.log_level
        X0_NODE_NAME    = var.node_name
        # Off by default: the token never crosses the underlay in clear (docs/contracts.md §1).
        X0_ALLOW_CLEAR_UNDERLAY = var.allow_clear_underlay ? "true" : "false"
        # The yggdrasil task's stdout (Nomad's log file in the shared alloc dir): the agent reports the peers its
        # daemon refused from it (docs/contracts.md §1).
        X0_DAEMON_LOG = "$${NOMAD_ALLOC_DIR}/logs/yggdrasil.stdout.0"
        # Peer admission: the keys file run-yggdrasil.sh merges into the daemon's AllowedPublicKeys (above).
        X0_ADMISSION_FILE = "$${NOMAD_ALLOC_DIR}/data/allowed-keys.json"
      }

      # HTTPS for the agent API when the job's Nomad variable holds tls_cert and tls_key (PEM; e.g. written from
      # Vault's PKI by an operator, or a template with Vault's pkiCert in place of nomadVar), and tls_ca to trust
      # (the issuing CA: other agents forwarding writes and x0dash with X0_TLS_CA). Rendered into secrets/ (0600
      # by default); empty files when the items are absent, and then the env template below does not point at them.
      template {
        destination = "secrets/agent.crt"
        change_mode = "restart"
        data        = <<-EOT
          {{ if nomadVarExists "${local.token_var}" }}{{ with nomadVar "${local.token_var}" }}{{ if .tls_cert }}{{ .tls_cert }}{{ end }}{{ end }}{{ end }}
        EOT
      }
      template {
        destination = "secrets/agent.key"
        change_mode = "restart"
        data        = <<-EOT
          {{ if nomadVarExists "${local.token_var}" }}{{ with nomadVar "${local.token_var}" }}{{ if .tls_key }}{{ .tls_key }}{{ end }}{{ end }}{{ end }}
        EOT
      }
      template {
        destination = "secrets/agent-ca.crt"
        change_mode = "restart"
        data        = <<-EOT
          {{ if nomadVarExists "${local.token_var}" }}{{ with nomadVar "${local.token_var}" }}{{ if .tls_ca }}{{ .tls_ca }}{{ end }}{{ end }}{{ end }}
        EOT
      }

      # NODE_ID and the API token. Its inputs (node name, the token variable) never change with membership, so
      # "restart" cannot cascade; it only fires when an operator rotates the token. nomadVarExists keeps the
      # agent starting (mutating endpoints refused) until the variable is created, instead of blocking.
      template {
        destination = "secrets/agent.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          NODE_ID={{ env "X0_NODE_NAME" | ${local.node_id} }}
          {{ if nomadVarExists "${local.token_var}" }}{{ with nomadVar "${local.token_var}" }}{{ if .api_token }}X0_API_TOKEN={{ .api_token }}{{ end }}
          {{ if and .tls_cert .tls_key }}X0_TLS_CERT={{ env "NOMAD_SECRETS_DIR" }}/agent.crt
          X0_TLS_KEY={{ env "NOMAD_SECRETS_DIR" }}/agent.key{{ end }}
          {{ if .tls_ca }}X0_TLS_CA={{ env "NOMAD_SECRETS_DIR" }}/agent-ca.crt{{ end }}{{ end }}{{ end }}
        EOT
      }

      # The members file (docs/contracts.md §2). Output is valid JSON for 0, 1 or N registrations: the comma is
      # written before every member but the first (counter $n), registrations without an x0-node tag are skipped,
      # and a node id seen twice (a stale registration beside its replacement) is written once. listen_uri is
      # added only when that allocation's Yggdrasil listener is registered too. No "links": every agent plans
      # the same links from the member ids with var.topology (auto: a full mesh up to 8 nodes, the expander
      # above, so 100 clients hold ~200 links, not 4,950); the lower id of each pair dials.
      template {
        destination = "local/members.json"
        change_mode = "noop"
        wait {
          min = "2s"
          max = "10s"
        }
        data = <<-EOT
          {{- $n := 0 -}}
          {{- $scheme := "http" -}}
          {{- if nomadVarExists "${local.token_var}" }}{{ with nomadVar "${local.token_var}" }}{{ if and .tls_cert .tls_key }}{{ $scheme = "https" }}{{ end }}{{ end }}{{ end -}}
          {"mesh": {{ env "NOMAD_JOB_ID" | toJSON }}, "topology": "${var.topology}", "members": [
          {{- range $a := nomadService "${local.agent_service}" -}}
            {{- $raw := "" -}}
            {{- range $a.Tags }}{{ if . | regexMatch "^x0-node=" }}{{ $raw = . | regexReplaceAll "^x0-node=" "" }}{{ end }}{{ end -}}
            {{- $id := $raw | ${local.node_id} -}}
            {{- if and $id (not (scratch.Key $id)) -}}
              {{- scratch.Set $id true -}}
              {{- if $n }}, {{ end }}{{ $n = add $n 1 -}}
              {"node_id": {{ $id | toJSON }}, "agent_url": {{ if $a.Address | regexMatch ":" }}{{ printf "%s://[%s]:%d" $scheme $a.Address $a.Port | toJSON }}{{ else }}{{ printf "%s://%s:%d" $scheme $a.Address $a.Port | toJSON }}{{ end }}, "host": {{ $a.Node | toJSON }}
              {{- range $a.Tags }}{{ if . | regexMatch "^x0-raft-port=[0-9]+$" }}, "raft_address": {{ printf "%s:%s" $a.Address (. | regexReplaceAll "^x0-raft-port=" "") | toJSON }}{{ end }}{{ end }}
              {{- range $y := nomadService "${local.peer_service}" }}{{ if eq $y.AllocID $a.AllocID -}}
                , "listen_uri": {{ if $y.Address | regexMatch ":" }}{{ printf "tls://[%s]:%d" $y.Address $y.Port | toJSON }}{{ else }}{{ printf "tls://%s:%d" $y.Address $y.Port | toJSON }}{{ end }}
              {{- end }}{{ end -}}
              }
            {{- end -}}
          {{- end -}}
          ]}
        EOT
      }

      service {
        provider = "nomad"
        name     = local.agent_service
        port     = "api"
        tags     = ["x0-mesh", "x0-node=${var.node_name}", "x0-raft-port=$${NOMAD_PORT_raft}"]

        # /health is 503 while the daemon is down; no check_restart: restarting the agent cannot fix the daemon
        # (Nomad restarts that task itself) and would only drop the agent's view during the outage.
        check {
          name     = "agent health"
          type     = "http"
          path     = "/health"
          interval = "5s"
          timeout  = "2s"
        }
      }

      resources {
        cpu    = var.agent_resources.cpu
        memory = var.agent_resources.memory
      }
    }
  }
}
