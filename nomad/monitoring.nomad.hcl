# x0tta6bl4 monitoring: Prometheus (finds the mesh agents through Nomad service discovery) and Grafana (our
# dashboards), both configured from this repository's files.
#
#   nomad var put nomad/jobs/x0-monitoring grafana_admin_password="$(openssl rand -base64 24)"
#   nomad job run nomad/monitoring.nomad.hcl        # from the repository root
#
# Design notes (why, not what):
# - The config files are not copied in here: `file()` reads them when the job is parsed by the CLI (jobspec2,
#   AllowFS), relative to the directory the CLI runs in (command/helpers.go passes only the file's base name as
#   the parse path), hence `repo_dir`. The same files are promtool-checked and run against a real mesh in
#   tests/observability, so what Nomad deploys is what was tested. `/v1/jobs/parse` cannot evaluate file().
# - Those files contain Go-template text of their own ({{ $labels.node_id }} in alert annotations, {{node_id}} in
#   Grafana legends), so their templates use [% %] as delimiters and consul-template leaves them alone.
# - Prometheus needs upstream's build: Debian's package is compiled without Nomad service discovery
#   (debian/patches/08-Disable_nomad.patch). Hence the docker driver with the official images; host networking so
#   Prometheus reaches the agents on their client addresses and Nomad's API on a dev agent's 127.0.0.1.
# - Grafana's admin password comes only from the Nomad variable: `nomadVar` blocks the task until the variable
#   exists and error_on_missing_key fails the render if the key is missing, so Grafana never starts with its
#   built-in admin/admin. Grafana applies it when it creates its database (alloc/data, kept across updates);
#   to rotate later use `grafana cli admin reset-admin-password` in the task.
# - ACL-enabled clusters: Prometheus' Nomad SD then needs a token that may read services in the namespace
#   (nomad_sd_configs accepts `authorization: {credentials_file: ...}`); not wired here.

variable "datacenters" {
  type        = list(string)
  default     = ["*"]
  description = "Datacenters to run monitoring in."
}

variable "repo_dir" {
  type        = string
  default     = "."
  description = "Path of the x0tta6bl4 checkout, relative to where `nomad job run` is started (or absolute)."
}

variable "nomad_addr" {
  type        = string
  default     = ""
  description = "Nomad HTTP API for Prometheus' service discovery; empty = http://<this client's address>:4646."
}

variable "prometheus_image" {
  type    = string
  default = "prom/prometheus:v2.53.2"
}

variable "grafana_image" {
  type    = string
  default = "grafana/grafana-oss:11.3.0"
}

variable "prometheus_port" {
  type        = number
  default     = 9090
  description = "Static host port of Prometheus (0 = dynamic)."
}

variable "grafana_port" {
  type        = number
  default     = 3000
  description = "Static host port of Grafana (0 = dynamic)."
}

variable "retention" {
  type    = string
  default = "15d"
}

variable "grafana_admin_user" {
  type    = string
  default = "admin"
}

locals {
  prometheus_service = "x0-monitoring-prometheus"
  grafana_service    = "x0-monitoring-grafana"
  # Readable by this job's tasks through their workload identity (default policy for nomad/jobs/<job id>).
  secrets_var = "nomad/jobs/x0-monitoring"
  # The address prometheus-nomad.yml ships with; replaced by the client's own address unless nomad_addr is set.
  shipped_nomad_addr = "http://127.0.0.1:4646"
  nomad_addr         = var.nomad_addr != "" ? var.nomad_addr : "http://[% env \"attr.unique.network.ip-address\" %]:4646"
}

job "x0-monitoring" {
  type        = "service"
  datacenters = var.datacenters

  group "prometheus" {
    count = 1

    network {
      port "http" {
        static = var.prometheus_port
      }
    }

    # The TSDB lives in alloc/data; sticky + migrate keep it across job updates.
    ephemeral_disk {
      size    = 2048
      sticky  = true
      migrate = true
    }

    service {
      provider = "nomad"
      name     = local.prometheus_service
      port     = "http"
      tags     = ["x0-monitoring"]

      check {
        name     = "prometheus ready"
        type     = "http"
        path     = "/-/ready"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "prometheus" {
      driver = "docker"

      config {
        image        = var.prometheus_image
        network_mode = "host"
        args = [
          "--config.file=/local/prometheus.yml",
          "--storage.tsdb.path=/alloc/data/prometheus",
          "--storage.tsdb.retention.time=${var.retention}",
          "--web.listen-address=:$${NOMAD_PORT_http}",
        ]
      }

      # rule_files in prometheus-nomad.yml are relative to the config file: local/rules/*.yml.
      template {
        destination     = "local/prometheus.yml"
        data            = replace(file("${var.repo_dir}/prometheus/prometheus-nomad.yml"), local.shipped_nomad_addr, local.nomad_addr)
        left_delimiter  = "[%"
        right_delimiter = "%]"
        change_mode     = "signal"
        change_signal   = "SIGHUP"
      }

      template {
        destination     = "local/rules/x0-records.yml"
        data            = file("${var.repo_dir}/prometheus/rules/x0-records.yml")
        left_delimiter  = "[%"
        right_delimiter = "%]"
        change_mode     = "signal"
        change_signal   = "SIGHUP"
      }

      template {
        destination     = "local/rules/x0-alerts.yml"
        data            = file("${var.repo_dir}/prometheus/rules/x0-alerts.yml")
        left_delimiter  = "[%"
        right_delimiter = "%]"
        change_mode     = "signal"
        change_signal   = "SIGHUP"
      }

      resources {
        cpu    = 300
        memory = 512
      }
    }
  }

  group "grafana" {
    count = 1

    network {
      port "http" {
        static = var.grafana_port
      }
    }

    ephemeral_disk {
      size    = 512
      sticky  = true
      migrate = true
    }

    service {
      provider = "nomad"
      name     = local.grafana_service
      port     = "http"
      tags     = ["x0-monitoring"]

      check {
        name     = "grafana health"
        type     = "http"
        path     = "/api/health"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "grafana" {
      driver = "docker"

      config {
        image        = var.grafana_image
        network_mode = "host"
      }

      env {
        GF_SERVER_HTTP_PORT            = "$${NOMAD_PORT_http}"
        GF_PATHS_DATA                  = "/alloc/data/grafana"
        GF_PATHS_PROVISIONING          = "/local/provisioning"
        GF_SECURITY_ADMIN_USER         = var.grafana_admin_user
        GF_AUTH_ANONYMOUS_ENABLED      = "false"
        GF_USERS_ALLOW_SIGN_UP         = "false"
        GF_ANALYTICS_REPORTING_ENABLED = "false"
        # Read by grafana/provisioning/dashboards/x0tta6bl4.yml.
        X0_DASHBOARDS_DIR = "/local/dashboards"
      }

      # The admin password, from the Nomad variable only (see the header). One line, no quotes or spaces needed
      # for a generated password (base64).
      template {
        destination          = "secrets/grafana-admin.env"
        env                  = true
        change_mode          = "restart"
        error_on_missing_key = true
        data                 = <<-EOT
          {{ with nomadVar "${local.secrets_var}" }}GF_SECURITY_ADMIN_PASSWORD={{ .grafana_admin_password }}{{ end }}
        EOT
      }

      # Where Prometheus runs, for grafana/provisioning/datasources/x0-prometheus.yml. An env template only
      # refreshes by restarting Grafana, which is what a moved Prometheus needs anyway.
      template {
        destination = "local/prometheus.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          {{ range nomadService 1 (env "NOMAD_ALLOC_ID") "${local.prometheus_service}" }}X0_PROMETHEUS_URL=http://{{ .Address }}:{{ .Port }}{{ end }}
        EOT
      }

      template {
        destination     = "local/provisioning/datasources/x0-prometheus.yml"
        data            = file("${var.repo_dir}/grafana/provisioning/datasources/x0-prometheus.yml")
        left_delimiter  = "[%"
        right_delimiter = "%]"
        change_mode     = "restart"
      }

      template {
        destination     = "local/provisioning/dashboards/x0tta6bl4.yml"
        data            = file("${var.repo_dir}/grafana/provisioning/dashboards/x0tta6bl4.yml")
        left_delimiter  = "[%"
        right_delimiter = "%]"
        change_mode     = "restart"
      }

      # Grafana re-reads the dashboards folder every 30 s (updateIntervalSeconds): no restart needed.
      template {
        destination     = "local/dashboards/mesh-overview.json"
        data            = file("${var.repo_dir}/grafana/dashboards/mesh-overview.json")
        left_delimiter  = "[%"
        right_delimiter = "%]"
        change_mode     = "noop"
      }

      template {
        destination     = "local/dashboards/node.json"
        data            = file("${var.repo_dir}/grafana/dashboards/node.json")
        left_delimiter  = "[%"
        right_delimiter = "%]"
        change_mode     = "noop"
      }

      resources {
        cpu    = 200
        memory = 256
      }
    }
  }
}
