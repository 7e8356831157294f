//! `bootplane cluster …`: settings, secrets, patches, credentials, bootstrap status and
//! rebuild, through the same `ops` rules as the UI and the API.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::output::{emit, read_input, write, write_json};
use super::{flag_error, invalid, parse_mac, CliError, DataDir};
use crate::db::Db;
use crate::ops::cluster as cops;
use crate::ops::{configs, materials, patches};
use crate::support::clock::Clock;
use crate::support::time::format_time;

#[derive(Debug, Args)]
pub struct ClusterFields {
    /// Kubernetes API endpoint, https://<vip-or-load-balancer>:6443 [default with --vip: https://<vip>:6443]
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Layer-2 VIP Talos keeps on one healthy control plane; "none" clears it
    #[arg(long)]
    pub vip: Option<String>,
    /// Talos version of the cluster's machines (sets the config contract and kernel arguments)
    /// [default at init: v1.13.9]
    #[arg(long)]
    pub talos_version: Option<String>,
    /// Kubernetes version [default: the Talos version's default]; "default" clears it
    #[arg(long)]
    pub kubernetes_version: Option<String>,
    /// Installer image [default: ghcr.io/siderolabs/installer:<talos-version>]; "default" clears it
    #[arg(long)]
    pub install_image: Option<String>,
    /// Pod subnets, comma-separated [default: 10.244.0.0/16]
    #[arg(long)]
    pub pod_subnets: Option<String>,
    /// Service subnets, comma-separated [default: 10.96.0.0/12]
    #[arg(long)]
    pub service_subnets: Option<String>,
    /// Kubernetes DNS domain [default: cluster.local]
    #[arg(long)]
    pub dns_domain: Option<String>,
    /// Subnets etcd advertises and the kubelet takes its node IP from: auto (each node's own
    /// subnet), none (Talos picks), or comma-separated subnets [default: auto]
    #[arg(long)]
    pub node_subnets: Option<String>,
    /// Nameservers of nodes without their own, comma-separated IPv4 addresses; auto (this
    /// host's resolvers), none (Talos's defaults 1.1.1.1, 8.8.8.8) [default at init: auto]
    #[arg(long)]
    pub nameservers: Option<String>,
    /// Bootstrap with a single control plane instead of waiting for three (true/false)
    #[arg(long)]
    pub single_controlplane: Option<bool>,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Create the cluster's secrets bundle (or adopt one from talosctl) and its settings
    Init {
        #[command(flatten)]
        data: DataDir,
        /// Cluster name
        #[arg(long)]
        name: String,
        #[command(flatten)]
        fields: ClusterFields,
        /// Adopt an existing cluster: talosctl's secrets.yaml instead of new secrets
        #[arg(long)]
        import_secrets: Option<PathBuf>,
    },
    /// Show the cluster's settings and patches
    Show {
        #[command(flatten)]
        data: DataDir,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Change the cluster's settings (refused if any machine's config would become invalid)
    Set {
        #[command(flatten)]
        data: DataDir,
        /// Rename the cluster
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        fields: ClusterFields,
    },
    /// Write the secrets bundle in talosctl's secrets.yaml format (file mode 0600)
    ExportSecrets {
        #[command(flatten)]
        data: DataDir,
        /// File to write (mode 0600)
        #[arg(long)]
        out: PathBuf,
    },
    /// Print (or write, mode 0600) a talosconfig for the cluster's control planes
    Talosconfig {
        #[command(flatten)]
        data: DataDir,
        /// File to write (mode 0600) instead of printing
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print (or write, mode 0600) an admin kubeconfig
    Kubeconfig {
        #[command(flatten)]
        data: DataDir,
        /// File to write (mode 0600) instead of printing
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the config a machine is served (it holds cluster secrets)
    Config {
        #[command(flatten)]
        data: DataDir,
        /// The machine's MAC address, e.g. 52:54:00:12:34:56
        #[arg(long)]
        mac: String,
    },
    /// Show the bootstrap decision and outcome of every cluster generation
    Bootstrap {
        #[command(flatten)]
        data: DataDir,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the whole cluster: every machine reinstalls at its next network boot, and etcd
    /// is bootstrapped again (once) when the control planes are back. Destroys the cluster's data.
    Rebuild {
        #[command(flatten)]
        data: DataDir,
        /// Required: confirms that the cluster's etcd data and workloads are to be discarded
        #[arg(long)]
        yes_destroy_everything: bool,
    },
    /// Manage config patches (strategic merge YAML, or an RFC 6902 JSON patch list)
    #[command(subcommand)]
    Patch(PatchCommand),
}

#[derive(Debug, Subcommand)]
pub enum PatchCommand {
    /// Add a patch, or replace the one with the same name; refused if any config would break
    Add {
        #[command(flatten)]
        data: DataDir,
        /// cluster, controlplane, worker or machine
        #[arg(long)]
        scope: String,
        /// The machine, for --scope machine
        #[arg(long)]
        mac: Option<String>,
        /// The patch's name, unique within its scope (adding one with a name in use replaces it)
        #[arg(long)]
        name: String,
        /// File holding the patch (YAML or JSON); - for standard input
        #[arg(long)]
        file: PathBuf,
    },
    /// List patches in the order they apply
    List {
        #[command(flatten)]
        data: DataDir,
    },
    /// Remove a patch
    Remove {
        #[command(flatten)]
        data: DataDir,
        /// cluster, controlplane, worker or machine
        #[arg(long)]
        scope: String,
        /// The machine, for --scope machine
        #[arg(long)]
        mac: Option<String>,
        /// The patch's name (`cluster patch list` shows them)
        #[arg(long)]
        name: String,
    },
}

impl ClusterFields {
    /// The flags as the ops layer takes them (`none` clears the VIP there too).
    fn input(&self, name: Option<String>) -> cops::ClusterInput {
        cops::ClusterInput {
            name,
            endpoint: self.endpoint.clone(),
            vip: self.vip.clone(),
            talos_version: self.talos_version.clone(),
            kubernetes_version: self.kubernetes_version.clone(),
            install_image: self.install_image.clone(),
            pod_subnets: self.pod_subnets.clone(),
            service_subnets: self.service_subnets.clone(),
            dns_domain: self.dns_domain.clone(),
            node_subnets: self.node_subnets.clone(),
            nameservers: self.nameservers.clone(),
            single_controlplane: self.single_controlplane,
            import_secrets: None,
        }
    }
}

/// The cluster's secrets bundle, for `export-secrets`.
async fn load_first_cluster(db: &Db) -> Result<materials::LoadedCluster, CliError> {
    materials::load_cluster(db, None)
        .await
        .map_err(|e| invalid(e.to_string()))
}

/// Runs a `cluster` command, writing its output to `out`.
pub async fn cluster(
    cmd: ClusterCommand,
    clock: &dyn Clock,
    out: &mut dyn std::io::Write,
) -> Result<(), CliError> {
    match cmd {
        ClusterCommand::Init {
            data,
            name,
            fields,
            import_secrets,
        } => {
            let db = Db::open(&data.data_dir).await?;
            let input = cops::ClusterInput {
                import_secrets: import_secrets.as_deref().map(read_input).transpose()?,
                ..fields.input(Some(name))
            };
            let c = cops::init_cluster(&db, &input, clock.now_ms())
                .await
                .map_err(flag_error)?;
            let spec = materials::cluster_spec(&c, &db.factory_schematics().await?)
                .map_err(|e| invalid(e.to_string()))?;
            write(
                out,
                format!(
                    "cluster {} initialised: Talos {}, Kubernetes {}, endpoint {}{}\n",
                    c.name,
                    spec.talos_version,
                    spec.kubernetes_version,
                    spec.endpoint,
                    if input.import_secrets.is_some() {
                        " (secrets imported)"
                    } else {
                        ""
                    }
                ),
            )?;
        }
        ClusterCommand::Show { data, json } => {
            let db = Db::open(&data.data_dir).await?;
            let c = cops::first_cluster(&db).await.map_err(flag_error)?;
            let patches = db.list_patches(&c.name).await?;
            if json {
                write_json(
                    out,
                    &serde_json::json!({
                        "cluster": c, "patches": patches,
                    }),
                )?;
            } else {
                let spec = materials::cluster_spec(&c, &db.factory_schematics().await?).ok();
                let line = |k: &str, v: String| format!("{k:<20} {v}\n");
                let mut text = line("name", c.name.clone());
                text += &line("initialised", format_time(c.initialised_at));
                text += &line("endpoint", c.endpoint.clone().unwrap_or_else(|| "-".into()));
                text += &line(
                    "vip",
                    c.vip.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                );
                if let Some(spec) = spec {
                    text += &line("talos version", spec.talos_version.clone());
                    text += &line("kubernetes version", spec.kubernetes_version.clone());
                    for (arches, image, source) in materials::installers_shown(&spec) {
                        let image = if image.is_empty() {
                            "none, the node installs its own version and schematic".to_string()
                        } else {
                            image
                        };
                        text += &line(
                            &format!("installer{arches}"),
                            format!("{image} (from {source})"),
                        );
                    }
                }
                text += &line("pod subnets", c.pod_subnets.join(", "));
                text += &line("service subnets", c.service_subnets.join(", "));
                text += &line("dns domain", c.dns_domain.clone());
                let machines = db.list_machines().await?;
                text += &line("node subnets", cops::describe_node_subnets(&c, &machines));
                text += &line("nameservers", cops::describe_nameservers(&c));
                for p in patches {
                    let target = p.mac.map(|m| format!(" {m}")).unwrap_or_default();
                    text += &line("patch", format!("{}{} {}", p.scope, target, p.name));
                }
                write(out, text)?;
            }
        }
        ClusterCommand::Set { data, name, fields } => {
            let db = Db::open(&data.data_dir).await?;
            let c = cops::update_cluster(&db, &fields.input(name), clock.now_ms())
                .await
                .map_err(flag_error)?;
            write(out, format!("cluster {} updated\n", c.name))?;
        }
        ClusterCommand::ExportSecrets { data, out: path } => {
            let db = Db::open(&data.data_dir).await?;
            let loaded = load_first_cluster(&db).await?;
            emit(
                out,
                Some(&path),
                &loaded.bundle.to_yaml(),
                "the secrets bundle",
            )?;
        }
        ClusterCommand::Talosconfig { data, out: path } => {
            let db = Db::open(&data.data_dir).await?;
            let text = cops::talosconfig(&db, clock.now_ms())
                .await
                .map_err(flag_error)?;
            emit(out, path.as_deref(), &text, "talosconfig")?;
        }
        ClusterCommand::Kubeconfig { data, out: path } => {
            let db = Db::open(&data.data_dir).await?;
            let text = cops::kubeconfig(&db, clock.now_ms())
                .await
                .map_err(flag_error)?;
            emit(out, path.as_deref(), &text, "kubeconfig")?;
        }
        ClusterCommand::Config { data, mac } => {
            let db = Db::open(&data.data_dir).await?;
            let mac = parse_mac(&mac)?;
            let text = configs::rendered_config(&db, mac, true)
                .await
                .map_err(flag_error)?;
            write(out, text)?;
        }
        ClusterCommand::Patch(PatchCommand::Add {
            data,
            scope,
            mac,
            name,
            file,
        }) => {
            let db = Db::open(&data.data_dir).await?;
            let input = patches::PatchInput {
                scope,
                mac,
                name,
                body: read_input(&file)?,
            };
            let saved = patches::save_patch(&db, &input, clock.now_ms())
                .await
                .map_err(flag_error)?;
            write(
                out,
                format!("patch {} saved ({})\n", saved.name, saved.scope),
            )?;
        }
        ClusterCommand::Bootstrap { data, json } => {
            let db = Db::open(&data.data_dir).await?;
            let status = cops::bootstrap_status(&db).await.map_err(flag_error)?;
            if json {
                write_json(out, &status)?;
            } else {
                write(
                    out,
                    format!(
                        "cluster {} generation {}\n",
                        status.cluster, status.generation
                    ),
                )?;
                if status.history.is_empty() {
                    write(
                        out,
                        "no bootstrap decided yet (waiting for the control planes to report in)\n",
                    )?;
                }
                for b in status.history {
                    write(
                        out,
                        format!(
                            "generation {}: target {} ({}) decided {}, calls {}, outcome {}: {}\n",
                            b.generation,
                            b.target_mac,
                            b.target_ip,
                            format_time(Some(b.decided_at)),
                            b.calls,
                            b.outcome.map_or("pending", |o| o.as_str()),
                            b.detail
                        ),
                    )?;
                }
            }
        }
        ClusterCommand::Rebuild {
            data,
            yes_destroy_everything,
        } => {
            if !yes_destroy_everything {
                return Err(invalid(
                    "rebuild reinstalls every machine and bootstraps a new etcd: all cluster data is lost; \
                     repeat with --yes-destroy-everything to go ahead",
                ));
            }
            let db = Db::open(&data.data_dir).await?;
            let c = cops::first_cluster(&db).await.map_err(flag_error)?;
            let count = cops::rebuild_cluster(&db, &c.name, clock.now_ms())
                .await
                .map_err(flag_error)?;
            write(
                out,
                format!("{count} machines of {} reinstall at their next network boot; etcd is bootstrapped again once the control planes report in\n", c.name),
            )?;
        }
        ClusterCommand::Patch(PatchCommand::List { data }) => {
            let db = Db::open(&data.data_dir).await?;
            for p in patches::list_patches(&db).await.map_err(flag_error)? {
                let target = p.mac.map(|m| format!(" {m}")).unwrap_or_default();
                write(
                    out,
                    format!(
                        "# {}{} {}\n{}\n",
                        p.scope,
                        target,
                        p.name,
                        p.body.trim_end()
                    ),
                )?;
            }
        }
        ClusterCommand::Patch(PatchCommand::Remove {
            data,
            scope,
            mac,
            name,
        }) => {
            let db = Db::open(&data.data_dir).await?;
            let input = patches::PatchInput {
                scope,
                mac,
                name: name.clone(),
                body: String::new(),
            };
            patches::remove_patch(&db, &input, clock.now_ms())
                .await
                .map_err(flag_error)?;
            write(out, format!("patch {name} removed\n"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cluster_show_names_the_installer_of_the_boot_assets_schematic() {
        use crate::assets::{Asset, AssetFile, AssetSource, AssetState, Digest};
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).await.unwrap();
        let init = crate::ops::cluster::ClusterInput {
            endpoint: Some("https://10.0.0.10:6443".into()),
            talos_version: Some("v1.13.9".into()),
            ..Default::default()
        };
        crate::ops::cluster::init_cluster(&db, &init, 1)
            .await
            .unwrap();
        let schematic = "a".repeat(64);
        let file = |name: &str| AssetFile {
            origin: format!("https://factory.talos.dev/image/{schematic}/v1.13.9/{name}"),
            digest: Some(Digest {
                size: 1,
                sha256: "b".repeat(64),
            }),
        };
        db.put_image(&Asset {
            version: "v1.13.9".into(),
            arch: crate::talos::Arch::Amd64,
            source: AssetSource::Factory {
                schematic: schematic.clone(),
            },
            kernel: file("kernel-amd64"),
            initramfs: file("initramfs-amd64.xz"),
            kernel_args: vec![],
            state: AssetState::Ready,
            updated_at: 1,
        })
        .await
        .unwrap();
        let mut out = Vec::new();
        let show = ClusterCommand::Show {
            data: DataDir {
                data_dir: dir.path().to_path_buf(),
            },
            json: false,
        };
        cluster(show, &crate::support::clock::SystemClock, &mut out)
            .await
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(&format!(
                "{:<20} factory.talos.dev/metal-installer/{schematic}:v1.13.9 (from Image Factory schematic {schematic} of the boot assets)",
                "installer amd64"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "{:<20} ghcr.io/siderolabs/installer:v1.13.9 (from Talos's default)",
                "installer arm64"
            )),
            "{text}"
        );
    }
}
