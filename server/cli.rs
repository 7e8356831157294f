//! Command-line interface: `serve`, and `machines` commands on the same database.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::clock::Clock;
use crate::config::{ServeOptions, DEFAULT_DATA_DIR};
use crate::db::{Db, DbError};
use crate::model::{validate_hostname, DiskHandoff, EfiBinary, Ipv4Cidr, Mac, Machine, Role};

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
    Serve(ServeArgs),
    /// Manage the machine inventory
    #[command(subcommand)]
    Machines(MachinesCommand),
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
    /// Disk Talos installs to, e.g. /dev/sda or /dev/nvme0n1; "none" clears it
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

fn cleared(value: &str) -> bool {
    matches!(value, "none" | "")
}

/// Applies the given fields to `m`, then checks the whole machine.
pub fn apply_fields(m: &mut Machine, f: &MachineFields) -> Result<(), CliError> {
    if let Some(role) = &f.role {
        m.role = role
            .parse::<Role>()
            .map_err(|e| invalid(format!("--role {e}")))?;
    }
    if let Some(hostname) = &f.hostname {
        m.hostname = if cleared(hostname) {
            None
        } else {
            validate_hostname(hostname).map_err(invalid)?;
            Some(hostname.clone())
        };
    }
    if let Some(ip) = &f.ip {
        m.ip = if cleared(ip) {
            None
        } else {
            Some(
                ip.parse::<Ipv4Cidr>()
                    .map_err(|e| invalid(format!("--ip {e}")))?,
            )
        };
    }
    if let Some(gw) = &f.gateway {
        m.gateway = if cleared(gw) {
            None
        } else {
            Some(
                gw.parse::<Ipv4Addr>()
                    .map_err(|_| invalid(format!("--gateway '{gw}' is not an IPv4 address")))?,
            )
        };
    }
    if let Some(dns) = &f.dns {
        m.dns = if cleared(dns) {
            Vec::new()
        } else {
            dns.split(',')
                .map(|s| {
                    s.trim()
                        .parse::<Ipv4Addr>()
                        .map_err(|_| invalid(format!("--dns '{s}' is not an IPv4 address")))
                })
                .collect::<Result<_, _>>()?
        };
    }
    if let Some(disk) = &f.install_disk {
        m.install_disk = if cleared(disk) {
            None
        } else {
            if !disk.starts_with("/dev/") || disk.contains(char::is_whitespace) {
                return Err(invalid(format!(
                    "--install-disk '{disk}' must be a device path such as /dev/sda"
                )));
            }
            Some(disk.clone())
        };
    }
    if let Some(handoff) = &f.disk_handoff {
        m.disk_handoff = handoff
            .parse::<DiskHandoff>()
            .map_err(|e| invalid(format!("--disk-handoff {e}")))?;
    }
    if let Some(efi) = &f.efi_binary {
        m.efi_binary = if efi == "default" {
            None
        } else {
            Some(
                efi.parse::<EfiBinary>()
                    .map_err(|e| invalid(format!("--efi-binary {e}")))?,
            )
        };
    }
    if let Some(cluster) = &f.cluster {
        m.cluster = cluster.clone();
    }
    check_machine(m)
}

/// Rules every stored machine keeps.
pub fn check_machine(m: &Machine) -> Result<(), CliError> {
    if m.role != Role::Unassigned {
        if m.hostname.is_none() {
            return Err(invalid(format!("a {} needs --hostname", m.role)));
        }
        if m.ip.is_none() {
            return Err(invalid(format!(
                "a {} needs a static --ip ADDR/PREFIX",
                m.role
            )));
        }
    }
    if let Some(ip) = m.ip {
        if ip.prefix == 0 || ip.prefix > 30 {
            return Err(invalid(format!("--ip {ip}: prefix must be /1 to /30")));
        }
        if ip.addr == ip.network() || ip.addr == ip.broadcast() {
            return Err(invalid(format!(
                "--ip {ip} is the network or broadcast address of its subnet"
            )));
        }
        if let Some(gw) = m.gateway {
            if !ip.contains(gw) {
                return Err(invalid(format!(
                    "--gateway {gw} is outside the machine's subnet {}/{}",
                    ip.network(),
                    ip.prefix
                )));
            }
            if gw == ip.addr {
                return Err(invalid("--gateway cannot be the machine's own address"));
            }
        }
    } else if m.gateway.is_some() {
        return Err(invalid("--gateway needs --ip"));
    }
    Ok(())
}

fn parse_mac(text: &str) -> Result<Mac, CliError> {
    text.parse::<Mac>()
        .map_err(|e| invalid(format!("--mac {e}")))
}

fn format_time(ms: Option<i64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) => {
            let secs = ms / 1000;
            let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
            let (y, mo, d) = civil_from_days(days);
            format!(
                "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02}",
                rem / 3600,
                rem % 3600 / 60,
                rem % 60
            )
        }
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
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
            apply_fields(&mut m, &add.fields)?;
            db.add_machine(&m, clock.now_ms()).await?;
            w(out, format!("added {} as {}\n", m.mac, m.role))?;
        }
        MachinesCommand::Set(set) => {
            let db = Db::open(&set.data.data_dir).await?;
            let mac = parse_mac(&set.mac)?;
            let mut m = db.get_machine(mac).await?.ok_or(DbError::NotFound(mac))?;
            apply_fields(&mut m, &set.fields)?;
            if let Some(installed) = set.installed {
                m.installed = installed;
            }
            db.update_machine(&m, clock.now_ms()).await?;
            w(out, format!("updated {}\n", m.mac))?;
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
                        "{:<17}  {:<12}  {:<16}  {:<18}  {:<9}  {:<4}  {}\n",
                        "MAC", "ROLE", "HOSTNAME", "IP", "INSTALLED", "ARCH", "LAST SEEN"
                    ),
                )?;
                for m in machines {
                    w(
                        out,
                        format!(
                            "{:<17}  {:<12}  {:<16}  {:<18}  {:<9}  {:<4}  {}\n",
                            m.mac,
                            m.role,
                            m.hostname.as_deref().unwrap_or("-"),
                            m.ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
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
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        }
    }

    fn mac() -> Mac {
        "52:54:00:00:00:01".parse().unwrap()
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
                "needs --hostname",
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

    #[test]
    fn times_print_as_utc() {
        assert_eq!(format_time(Some(0)), "1970-01-01 00:00:00");
        assert_eq!(format_time(Some(1_763_731_200_000)), "2025-11-21 13:20:00");
        assert_eq!(format_time(None), "-");
    }
}
