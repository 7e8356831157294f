//! Command-line interface: `serve`, and `machines` and `cluster` commands on the same database.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{ServeOptions, DEFAULT_DATA_DIR};
use crate::db::{Db, DbError};
use crate::model::{Mac, Machine};
use crate::ops::materials;
use crate::support::clock::Clock;
use crate::support::time::format_time;

mod images;
pub use images::{images, ImagesAdd, ImagesCommand, ImagesDir};

#[derive(Debug, Parser)]
#[command(
    name = "bootplane",
    version,
    about = "Network boot and provisioning for Talos Linux clusters"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the appliance: DHCP, TFTP and HTTP boot services
    Serve(Box<ServeArgs>),
    /// Manage the machine inventory
    #[command(subcommand)]
    Machines(MachinesCommand),
    /// Manage the cluster: settings, secrets, patches, operator credentials
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Manage Talos boot assets: kernel and initramfs per version, fetched and verified
    #[command(subcommand)]
    Images(ImagesCommand),
}

#[derive(Debug, Args)]
pub struct ClusterFields {
    /// Kubernetes API endpoint, https://<vip-or-load-balancer>:6443 [default with --vip: https://<vip>:6443]
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Layer-2 VIP Talos keeps on one healthy control plane; "none" clears it
    #[arg(long)]
    pub vip: Option<String>,
    /// Talos version of the cluster's machines (sets the config contract and kernel arguments)
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
        #[arg(long)]
        out: PathBuf,
    },
    /// Print (or write, mode 0600) a talosconfig for the cluster's control planes
    Talosconfig {
        #[command(flatten)]
        data: DataDir,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print (or write, mode 0600) an admin kubeconfig
    Kubeconfig {
        #[command(flatten)]
        data: DataDir,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the config a machine is served (it holds cluster secrets)
    Config {
        #[command(flatten)]
        data: DataDir,
        #[arg(long)]
        mac: String,
    },
    /// Show the bootstrap decision and outcome of every cluster generation
    Bootstrap {
        #[command(flatten)]
        data: DataDir,
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
        #[arg(long)]
        scope: String,
        #[arg(long)]
        mac: Option<String>,
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file [default: <data-dir>/bootplane.toml when it exists]
    #[arg(long, env = "BOOTPLANE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub options: ServeOptions,
}

#[derive(Debug, Args)]
pub struct DataDir {
    /// Directory holding bootplane.db
    #[arg(long, env = "BOOTPLANE_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum MachinesCommand {
    /// Add a machine by MAC address
    Add(MachineAdd),
    /// Change fields of a known machine
    Set(MachineSet),
    /// List machines
    List {
        #[command(flatten)]
        data: DataDir,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Remove a machine (its event history is kept)
    Remove {
        #[command(flatten)]
        data: DataDir,
        #[arg(long)]
        mac: String,
    },
    /// Reinstall a machine at its next network boot (a control plane's stale etcd member is
    /// removed through a healthy control plane)
    Reinstall {
        #[command(flatten)]
        data: DataDir,
        #[arg(long)]
        mac: String,
    },
    /// Show a machine's event log, oldest first
    Events {
        #[command(flatten)]
        data: DataDir,
        #[arg(long)]
        mac: String,
        /// How many of the newest events to show
        #[arg(long, default_value_t = 200)]
        limit: i64,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Show a machine's boot log (kernel messages it streamed), oldest first
    Log {
        #[command(flatten)]
        data: DataDir,
        #[arg(long)]
        mac: String,
        /// How many of the newest lines to show
        #[arg(long, default_value_t = 500)]
        limit: i64,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct MachineFields {
    /// controlplane, worker or unassigned
    #[arg(long)]
    pub role: Option<String>,
    /// Hostname (one DNS label); "none" clears it
    #[arg(long)]
    pub hostname: Option<String>,
    /// Static address with prefix, e.g. 192.168.1.21/24; "none" clears it
    #[arg(long)]
    pub ip: Option<String>,
    /// Default gateway; "none" clears it
    #[arg(long)]
    pub gateway: Option<String>,
    /// DNS servers, comma-separated; "none" clears them
    #[arg(long)]
    pub dns: Option<String>,
    /// Disk Talos installs to, e.g. /dev/sda or /dev/nvme0n1; "none" clears it (then Talos picks
    /// the first disk of 6 GiB or more that is not read-only or a CD drive)
    #[arg(long)]
    pub install_disk: Option<String>,
    /// How an installed machine leaves network boot: exit, http-404 or sanboot
    #[arg(long)]
    pub disk_handoff: Option<String>,
    /// iPXE build for this machine's x86-64 UEFI firmware: ipxe.efi or snponly.efi; "default" clears it
    #[arg(long)]
    pub efi_binary: Option<String>,
    /// Cluster the machine belongs to
    #[arg(long)]
    pub cluster: Option<String>,
    /// Talos version this machine boots and installs (its cluster's otherwise); "none" clears it
    #[arg(long)]
    pub talos_version: Option<String>,
    /// Run Talos from the network at every boot, never installed (Talos 1.14 or newer, workers
    /// only); --diskless false installs it again
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub diskless: Option<bool>,
}

#[derive(Debug, Args)]
pub struct MachineAdd {
    #[command(flatten)]
    pub data: DataDir,
    #[arg(long)]
    pub mac: String,
    #[command(flatten)]
    pub fields: MachineFields,
}

#[derive(Debug, Args)]
pub struct MachineSet {
    #[command(flatten)]
    pub data: DataDir,
    #[arg(long)]
    pub mac: String,
    #[command(flatten)]
    pub fields: MachineFields,
    /// Mark the machine installed (true) or to be installed again (false)
    #[arg(long)]
    pub installed: Option<bool>,
    /// Wipe the install disk when Talos installs (true/false)
    #[arg(long)]
    pub wipe: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cannot write output: {0}")]
    Output(String),
}

fn invalid(msg: impl Into<String>) -> CliError {
    CliError::Invalid(msg.into())
}

/// The flag an ops field error belongs to.
fn flag_error(e: crate::ops::OpsError) -> CliError {
    match e {
        crate::ops::OpsError::Invalid(errors) => invalid(
            errors
                .iter()
                .map(|fe| match fe.field.as_str() {
                    // Fields that are no flag of their own: the whole config, the patch file.
                    "config" | "cluster" => fe.message.clone(),
                    "body" => format!("--file: {}", fe.message),
                    "secrets" => format!("--import-secrets: {}", fe.message),
                    field => format!("--{}: {}", field.replace('_', "-"), fe.message),
                })
                .collect::<Vec<_>>()
                .join("; "),
        ),
        crate::ops::OpsError::Db(e) => CliError::Db(e),
        other => invalid(other.to_string()),
    }
}

/// Applies the given fields to `m`, then checks the whole machine (the rules live in `ops`).
pub fn apply_fields(m: &mut Machine, f: &MachineFields) -> Result<(), CliError> {
    let input = crate::ops::MachineInput {
        role: f.role.clone(),
        hostname: f.hostname.clone(),
        ip: f.ip.clone(),
        gateway: f.gateway.clone(),
        dns: f.dns.clone(),
        install_disk: f.install_disk.clone(),
        disk_handoff: f.disk_handoff.clone(),
        efi_binary: f.efi_binary.clone(),
        wipe: None,
        cluster: f.cluster.clone(),
        talos_version: f.talos_version.clone(),
        diskless: f.diskless,
    };
    crate::ops::apply_machine_input(m, &input).map_err(flag_error)
}

fn parse_mac(text: &str) -> Result<Mac, CliError> {
    text.parse::<Mac>()
        .map_err(|e| invalid(format!("--mac {e}")))
}

/// One boot log line for a terminal: the node's time when it sent one, else when it arrived;
/// control characters the kernel message may carry are shown escaped, never sent raw.
fn boot_log_text(line: &crate::model::BootLogLine) -> String {
    let time = line
        .talos_time
        .clone()
        .unwrap_or_else(|| format_time(Some(line.at)));
    let mut msg = String::with_capacity(line.msg.len());
    for c in line.msg.chars() {
        if c.is_control() {
            msg.extend(c.escape_default());
        } else {
            msg.push(c);
        }
    }
    format!(
        "{time}  {:<7}  {msg}\n",
        line.priority.as_deref().unwrap_or("-")
    )
}

/// Runs a `machines` command, writing its output to `out`.
pub async fn machines(
    cmd: MachinesCommand,
    clock: &dyn Clock,
    out: &mut dyn std::io::Write,
) -> Result<(), CliError> {
    let w = |out: &mut dyn std::io::Write, text: String| {
        out.write_all(text.as_bytes())
            .map_err(|e| CliError::Output(e.to_string()))
    };
    match cmd {
        MachinesCommand::Add(add) => {
            let db = Db::open(&add.data.data_dir).await?;
            let mut m = Machine::discovered(parse_mac(&add.mac)?);
            if let Some(first) = db.get_cluster(None).await? {
                m.cluster = first.name;
            }
            apply_fields(&mut m, &add.fields)?;
            check_machine_config(&db, &m).await?;
            db.add_machine(&m, clock.now_ms()).await?;
            w(out, format!("added {} as {}\n", m.mac, m.role))?;
        }
        MachinesCommand::Set(set) => {
            let db = Db::open(&set.data.data_dir).await?;
            let mac = parse_mac(&set.mac)?;
            let old = db.get_machine(mac).await?.ok_or(DbError::NotFound(mac))?;
            let mut m = old.clone();
            apply_fields(&mut m, &set.fields)?;
            if let Some(installed) = set.installed {
                m.installed = installed;
            }
            if let Some(wipe) = set.wipe {
                m.wipe = wipe;
            }
            check_machine_config(&db, &m).await?;
            db.update_machine(&m, clock.now_ms()).await?;
            if set.installed.is_none() && crate::ops::installs_now(&old, &m) {
                db.mark_reinstall(
                    mac,
                    "operator made a diskless machine install to disk",
                    clock.now_ms(),
                )
                .await?;
                w(
                    out,
                    format!("updated {mac}: it installs Talos at its next network boot\n"),
                )?;
            } else {
                w(out, format!("updated {}\n", m.mac))?;
            }
        }
        MachinesCommand::List { data, json } => {
            let db = Db::open(&data.data_dir).await?;
            let machines = db.list_machines().await?;
            if json {
                let text = serde_json::to_string_pretty(&machines)
                    .map_err(|e| CliError::Output(e.to_string()))?;
                w(out, text + "\n")?;
            } else {
                w(
                    out,
                    format!(
                        "{:<17}  {:<12}  {:<16}  {:<18}  {:<13}  {:<9}  {:<4}  {}\n",
                        "MAC", "ROLE", "HOSTNAME", "IP", "STATE", "INSTALLED", "ARCH", "LAST SEEN"
                    ),
                )?;
                for m in machines {
                    w(
                        out,
                        format!(
                            "{:<17}  {:<12}  {:<16}  {:<18}  {:<13}  {:<9}  {:<4}  {}\n",
                            m.mac,
                            m.role,
                            m.hostname.as_deref().unwrap_or("-"),
                            m.ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
                            m.state,
                            if m.installed { "yes" } else { "no" },
                            m.last_arch
                                .map(|a| a.to_string())
                                .unwrap_or_else(|| "-".into()),
                            format_time(m.last_seen)
                        ),
                    )?;
                }
            }
        }
        MachinesCommand::Remove { data, mac } => {
            let db = Db::open(&data.data_dir).await?;
            let mac = parse_mac(&mac)?;
            db.remove_machine(mac, clock.now_ms()).await?;
            w(out, format!("removed {mac}\n"))?;
        }
        MachinesCommand::Reinstall { data, mac } => {
            let db = Db::open(&data.data_dir).await?;
            let mac = parse_mac(&mac)?;
            let m = db.get_machine(mac).await?.ok_or(DbError::NotFound(mac))?;
            if !m.is_assigned() {
                return Err(invalid(format!("{mac} has no role; assign it first")));
            }
            db.mark_reinstall(mac, "operator asked for a reinstall", clock.now_ms())
                .await?;
            w(
                out,
                format!("{mac} reinstalls at its next network boot (make it network-boot: the installed disk boots first)\n"),
            )?;
        }
        MachinesCommand::Events {
            data,
            mac,
            limit,
            json,
        } => {
            let db = Db::open(&data.data_dir).await?;
            let mac = parse_mac(&mac)?;
            let events = db.events(mac, limit).await?;
            if json {
                let text = serde_json::to_string_pretty(&events)
                    .map_err(|e| CliError::Output(e.to_string()))?;
                w(out, text + "\n")?;
            } else {
                for e in events {
                    w(
                        out,
                        format!(
                            "{}  {:<18}  {}\n",
                            format_time(Some(e.at)),
                            e.kind,
                            e.detail
                        ),
                    )?;
                }
            }
        }
        MachinesCommand::Log {
            data,
            mac,
            limit,
            json,
        } => {
            let db = Db::open(&data.data_dir).await?;
            let mac = parse_mac(&mac)?;
            let lines = db.boot_log(mac, limit.max(0)).await?;
            if json {
                let text = serde_json::to_string_pretty(&lines)
                    .map_err(|e| CliError::Output(e.to_string()))?;
                w(out, text + "\n")?;
            } else {
                for line in lines {
                    w(out, boot_log_text(&line))?;
                }
            }
        }
    }
    Ok(())
}

/// Writes a file readable by its owner only: everything written here holds secrets.
pub fn write_private(path: &std::path::Path, contents: &str) -> Result<(), CliError> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| CliError::Output(format!("{}: {e}", path.display())))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .and_then(|_| file.write_all(contents.as_bytes()))
        .map_err(|e| CliError::Output(format!("{}: {e}", path.display())))
}

/// Inventory-wide rules (unique names and addresses, three control planes, VIP, the config
/// renders), and the LAN's (subnet, pool, the appliance's own addresses) as the last `serve`
/// recorded them: before the first `serve` there is no LAN to check against yet.
async fn check_machine_config(db: &Db, m: &Machine) -> Result<(), CliError> {
    let others = db.list_machines().await?;
    let lan = db
        .lan_facts()
        .await?
        .map(|facts| crate::ops::Lan::from_facts(&facts));
    crate::ops::check_against_inventory(db, lan.as_ref(), m, &others)
        .await
        .map_err(flag_error)
}

fn read_input(path: &std::path::Path) -> Result<String, CliError> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| invalid(format!("cannot read standard input: {e}")))?;
        Ok(text)
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))
    }
}

impl ClusterFields {
    /// The flags as the ops layer takes them (`none` clears the VIP there too).
    fn input(&self, name: Option<String>) -> crate::ops::cluster::ClusterInput {
        crate::ops::cluster::ClusterInput {
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
        }
    }
}

/// The cluster's secrets bundle, for `export-secrets` and `config`.
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
    let w = |out: &mut dyn std::io::Write, text: String| {
        out.write_all(text.as_bytes())
            .map_err(|e| CliError::Output(e.to_string()))
    };
    let emit = |out: &mut dyn std::io::Write, path: Option<PathBuf>, text: String, what: &str| {
        match path {
            Some(path) => {
                write_private(&path, &text)?;
                w(
                    out,
                    format!("wrote {what} to {} (mode 0600)\n", path.display()),
                )
            }
            None => w(out, text),
        }
    };
    match cmd {
        ClusterCommand::Init {
            data,
            name,
            fields,
            import_secrets,
        } => {
            let db = Db::open(&data.data_dir).await?;
            let import = import_secrets.as_deref().map(read_input).transpose()?;
            let c = crate::ops::cluster::init_cluster(
                &db,
                &fields.input(Some(name)),
                import.as_deref(),
                clock.now_ms(),
            )
            .await
            .map_err(flag_error)?;
            let spec = materials::cluster_spec(&c, &db.factory_schematics().await?)
                .map_err(|e| invalid(e.to_string()))?;
            w(
                out,
                format!(
                    "cluster {} initialised: Talos {}, Kubernetes {}, endpoint {}{}\n",
                    c.name,
                    spec.talos_version,
                    spec.kubernetes_version,
                    spec.endpoint,
                    if import.is_some() {
                        " (secrets imported)"
                    } else {
                        ""
                    }
                ),
            )?;
        }
        ClusterCommand::Show { data, json } => {
            let db = Db::open(&data.data_dir).await?;
            let c = crate::ops::cluster::first_cluster(&db)
                .await
                .map_err(flag_error)?;
            let patches = db.list_patches(&c.name).await?;
            if json {
                let text = serde_json::to_string_pretty(&serde_json::json!({
                    "cluster": c, "patches": patches,
                }))
                .map_err(|e| CliError::Output(e.to_string()))?;
                w(out, text + "\n")?;
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
                text += &line(
                    "node subnets",
                    crate::ops::cluster::describe_node_subnets(&c, &machines),
                );
                text += &line("nameservers", crate::ops::cluster::describe_nameservers(&c));
                for p in patches {
                    let target = p.mac.map(|m| format!(" {m}")).unwrap_or_default();
                    text += &line("patch", format!("{}{} {}", p.scope, target, p.name));
                }
                w(out, text)?;
            }
        }
        ClusterCommand::Set { data, name, fields } => {
            let db = Db::open(&data.data_dir).await?;
            let c = crate::ops::cluster::update_cluster(&db, &fields.input(name), clock.now_ms())
                .await
                .map_err(flag_error)?;
            w(out, format!("cluster {} updated\n", c.name))?;
        }
        ClusterCommand::ExportSecrets { data, out: path } => {
            let db = Db::open(&data.data_dir).await?;
            let loaded = load_first_cluster(&db).await?;
            emit(
                out,
                Some(path),
                loaded.bundle.to_yaml(),
                "the secrets bundle",
            )?;
        }
        ClusterCommand::Talosconfig { data, out: path } => {
            let db = Db::open(&data.data_dir).await?;
            let text = crate::ops::cluster::talosconfig(&db, clock.now_ms())
                .await
                .map_err(flag_error)?;
            emit(out, path, text, "talosconfig")?;
        }
        ClusterCommand::Kubeconfig { data, out: path } => {
            let db = Db::open(&data.data_dir).await?;
            let text = crate::ops::cluster::kubeconfig(&db, clock.now_ms())
                .await
                .map_err(flag_error)?;
            emit(out, path, text, "kubeconfig")?;
        }
        ClusterCommand::Config { data, mac } => {
            let db = Db::open(&data.data_dir).await?;
            let mac = parse_mac(&mac)?;
            let m = db.get_machine(mac).await?.ok_or(DbError::NotFound(mac))?;
            let loaded = materials::load_cluster(&db, Some(&m.cluster))
                .await
                .map_err(|e| invalid(e.to_string()))?;
            let text =
                materials::render_machine(&loaded, &m).map_err(|e| invalid(e.to_string()))?;
            w(out, text)?;
        }
        ClusterCommand::Patch(PatchCommand::Add {
            data,
            scope,
            mac,
            name,
            file,
        }) => {
            let db = Db::open(&data.data_dir).await?;
            let input = crate::ops::cluster::PatchInput {
                scope,
                mac,
                name,
                body: read_input(&file)?,
            };
            let saved = crate::ops::cluster::save_patch(&db, &input, clock.now_ms())
                .await
                .map_err(flag_error)?;
            w(
                out,
                format!("patch {} saved ({})\n", saved.name, saved.scope),
            )?;
        }
        ClusterCommand::Bootstrap { data, json } => {
            let db = Db::open(&data.data_dir).await?;
            let status = crate::ops::cluster::bootstrap_status(&db)
                .await
                .map_err(flag_error)?;
            if json {
                let text = serde_json::to_string_pretty(&status)
                    .map_err(|e| CliError::Output(e.to_string()))?;
                w(out, text + "\n")?;
            } else {
                w(
                    out,
                    format!(
                        "cluster {} generation {}\n",
                        status.cluster, status.generation
                    ),
                )?;
                if status.history.is_empty() {
                    w(
                        out,
                        "no bootstrap decided yet (waiting for the control planes to report in)\n"
                            .into(),
                    )?;
                }
                for b in status.history {
                    w(
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
            let c = crate::ops::cluster::first_cluster(&db)
                .await
                .map_err(flag_error)?;
            let count = crate::ops::rebuild_cluster(&db, &c.name, clock.now_ms())
                .await
                .map_err(flag_error)?;
            w(
                out,
                format!("{count} machines of {} reinstall at their next network boot; etcd is bootstrapped again once the control planes report in\n", c.name),
            )?;
        }
        ClusterCommand::Patch(PatchCommand::List { data }) => {
            let db = Db::open(&data.data_dir).await?;
            for p in crate::ops::cluster::list_patches(&db)
                .await
                .map_err(flag_error)?
            {
                let target = p.mac.map(|m| format!(" {m}")).unwrap_or_default();
                w(
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
            let input = crate::ops::cluster::PatchInput {
                scope,
                mac,
                name: name.clone(),
                body: String::new(),
            };
            crate::ops::cluster::remove_patch(&db, &input, clock.now_ms())
                .await
                .map_err(flag_error)?;
            w(out, format!("patch {name} removed\n"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Role;
    use std::net::Ipv4Addr;

    fn fields() -> MachineFields {
        MachineFields {
            role: Some("controlplane".into()),
            hostname: Some("cp-1".into()),
            ip: Some("10.0.0.11/24".into()),
            gateway: Some("10.0.0.1".into()),
            dns: None,
            install_disk: None,
            disk_handoff: None,
            efi_binary: None,
            cluster: None,
            talos_version: None,
            diskless: None,
        }
    }

    fn mac() -> Mac {
        "52:54:00:00:00:01".parse().unwrap()
    }

    #[test]
    fn a_talos_version_pin_is_set_refused_by_its_flag_and_cleared() {
        let mut m = Machine::discovered(mac());
        let pin = |v: &str| MachineFields {
            talos_version: Some(v.into()),
            ..fields()
        };
        apply_fields(&mut m, &pin("v1.10.9")).unwrap();
        assert_eq!(m.talos_version.as_deref(), Some("v1.10.9"));
        let err = apply_fields(&mut m, &pin("1.10")).unwrap_err().to_string();
        assert!(err.starts_with("--talos-version: "), "{err}");
        apply_fields(&mut m, &pin("none")).unwrap();
        assert_eq!(m.talos_version, None);
    }

    /// Runs `machines add` for a worker with `extra` fields against `dir`'s database.
    async fn add_worker(dir: &std::path::Path, extra: MachineFields) -> Result<String, CliError> {
        let mut out = Vec::new();
        let add = MachineAdd {
            data: DataDir {
                data_dir: dir.to_path_buf(),
            },
            mac: "52:54:00:00:00:21".into(),
            fields: extra,
        };
        machines(
            MachinesCommand::Add(add),
            &crate::support::clock::SystemClock,
            &mut out,
        )
        .await?;
        Ok(String::from_utf8(out).unwrap_or_default())
    }

    #[tokio::test]
    async fn machines_list_lines_up_every_column_under_its_heading() {
        let dir = tempfile::tempdir().unwrap();
        let worker = MachineFields {
            role: Some("worker".into()),
            hostname: Some("w-1".into()),
            ip: Some("10.0.0.21/24".into()),
            ..fields()
        };
        add_worker(dir.path(), worker).await.unwrap();
        let mut out = Vec::new();
        let list = MachinesCommand::List {
            data: DataDir {
                data_dir: dir.path().to_path_buf(),
            },
            json: false,
        };
        machines(list, &crate::support::clock::SystemClock, &mut out)
            .await
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut lines = text.lines();
        let head = lines.next().unwrap();
        let row = lines.next().unwrap();
        for (heading, value) in [
            ("HOSTNAME", "w-1"),
            ("IP", "10.0.0.21/24"),
            ("STATE", "assigned"),
            ("INSTALLED", "no"),
        ] {
            assert_eq!(head.find(heading), row.find(value), "{heading}:\n{text}");
        }
    }

    #[tokio::test]
    async fn diskless_is_refused_by_its_flag_before_talos_1_14_and_taken_on_a_1_14_pin() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).await.unwrap();
        let init = crate::ops::cluster::ClusterInput {
            endpoint: Some("https://10.0.0.10:6443".into()),
            talos_version: Some("v1.13.9".into()),
            ..Default::default()
        };
        crate::ops::cluster::init_cluster(&db, &init, None, 1)
            .await
            .unwrap();
        let worker = |pin: Option<&str>| MachineFields {
            role: Some("worker".into()),
            hostname: Some("w-1".into()),
            ip: Some("10.0.0.21/24".into()),
            diskless: Some(true),
            talos_version: pin.map(str::to_string),
            ..fields()
        };
        let err = add_worker(dir.path(), worker(None))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--diskless: diskless machines need Talos 1.14 or newer")
                && err.contains("v1.13.9, its cluster's version"),
            "{err}"
        );
        assert!(db
            .get_machine("52:54:00:00:00:21".parse().unwrap())
            .await
            .unwrap()
            .is_none());
        add_worker(dir.path(), worker(Some("v1.14.0-rc.1")))
            .await
            .unwrap();
        let m = db
            .get_machine("52:54:00:00:00:21".parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert!(m.diskless);
    }

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
        crate::ops::cluster::init_cluster(&db, &init, None, 1)
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

    #[test]
    fn a_complete_controlplane_is_accepted() {
        let mut m = Machine::discovered(mac());
        apply_fields(&mut m, &fields()).unwrap();
        assert_eq!(m.role, Role::Controlplane);
        assert_eq!(m.gateway, Some(Ipv4Addr::new(10, 0, 0, 1)));
    }

    #[test]
    fn bad_forms_are_explained() {
        let cases: Vec<(MachineFields, &str)> = vec![
            (
                MachineFields {
                    role: Some("master".into()),
                    ..fields()
                },
                "--role",
            ),
            (
                MachineFields {
                    hostname: None,
                    ..fields()
                },
                "--hostname: a controlplane needs a hostname",
            ),
            (
                MachineFields {
                    ip: Some("10.0.0.11".into()),
                    ..fields()
                },
                "prefix",
            ),
            (
                MachineFields {
                    ip: Some("10.0.0.0/24".into()),
                    ..fields()
                },
                "network or broadcast",
            ),
            (
                MachineFields {
                    gateway: Some("10.0.1.1".into()),
                    ..fields()
                },
                "outside",
            ),
            (
                MachineFields {
                    dns: Some("1.1.1.1,x".into()),
                    ..fields()
                },
                "--dns",
            ),
            (
                MachineFields {
                    install_disk: Some("sda".into()),
                    ..fields()
                },
                "device path",
            ),
            (
                MachineFields {
                    disk_handoff: Some("reboot".into()),
                    ..fields()
                },
                "--disk-handoff",
            ),
        ];
        for (f, expected) in cases {
            let mut m = Machine::discovered(mac());
            let err = apply_fields(&mut m, &f).unwrap_err().to_string();
            assert!(err.contains(expected), "{err} should mention {expected}");
        }
    }
}
