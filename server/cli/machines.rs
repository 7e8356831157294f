//! `bootplane machines …`: the inventory, saved through `ops` like the UI's and the API's
//! changes: the same checks and messages, `--confirm` where they ask for confirmation, and
//! no way to mark a machine installed (only its node's report does).

use clap::{Args, Subcommand};

use super::output::{write, write_json};
use super::{flag_error, invalid, parse_mac, CliError, DataDir};
use crate::db::Db;
use crate::ops::input::MachineInput;
use crate::ops::lan::Lan;
use crate::ops::{self, OpsError};
use crate::support::clock::Clock;
use crate::support::time::format_time;

#[derive(Debug, Subcommand)]
pub enum MachinesCommand {
    /// Add a machine by MAC address
    Add(MachineAdd),
    /// Change fields of a known machine (a consequential change needs --confirm)
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
        /// The machine's MAC address, e.g. 52:54:00:12:34:56
        #[arg(long)]
        mac: String,
    },
    /// Reinstall a machine at its next network boot (a control plane's stale etcd member is
    /// removed through a healthy control plane)
    Reinstall {
        #[command(flatten)]
        data: DataDir,
        /// The machine's MAC address, e.g. 52:54:00:12:34:56
        #[arg(long)]
        mac: String,
    },
    /// Show a machine's event log, oldest first
    Events {
        #[command(flatten)]
        data: DataDir,
        /// The machine's MAC address, e.g. 52:54:00:12:34:56
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
        /// The machine's MAC address, e.g. 52:54:00:12:34:56
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
pub struct MachineAdd {
    #[command(flatten)]
    pub data: DataDir,
    /// The machine's MAC address, e.g. 52:54:00:12:34:56
    #[arg(long)]
    pub mac: String,
    #[command(flatten)]
    pub fields: MachineInput,
}

#[derive(Debug, Args)]
pub struct MachineSet {
    #[command(flatten)]
    pub data: DataDir,
    /// The machine's MAC address, e.g. 52:54:00:12:34:56
    #[arg(long)]
    pub mac: String,
    #[command(flatten)]
    pub fields: MachineInput,
    /// Go ahead with a change the UI and the API ask to confirm (a control plane of a
    /// bootstrapped cluster changing role: its etcd member is removed and it reinstalls);
    /// without it such a change is refused and explained
    #[arg(long)]
    pub confirm: bool,
    /// Only false: reinstall the machine at its next network boot, as `machines reinstall`.
    /// Only its node marks a machine installed
    #[arg(long, value_name = "false", value_parser = reinstall_only)]
    pub installed: Option<bool>,
}

/// Why `--installed true` is refused.
pub const INSTALLED_BY_NODE: &str = "only its node marks a machine installed (it reports in \
    after Talos installed), never an operator; --installed false reinstalls it at its next \
    network boot";

/// `--installed` takes false only: nothing an operator types marks a machine installed.
fn reinstall_only(text: &str) -> Result<bool, String> {
    match text.trim() {
        "false" => Ok(false),
        "true" => Err(INSTALLED_BY_NODE.into()),
        other => Err(format!("'{other}' is not false")),
    }
}

/// The LAN (subnet, pool, the appliance's own addresses) as the last `serve` recorded it:
/// before the first `serve` there is no LAN to check against yet.
async fn recorded_lan(db: &Db) -> Result<Option<Lan>, CliError> {
    Ok(db.lan_facts().await?.map(|facts| Lan::from_facts(&facts)))
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
    match cmd {
        MachinesCommand::Add(add) => {
            let db = Db::open(&add.data.data_dir).await?;
            let mac = parse_mac(&add.mac)?;
            let lan = recorded_lan(&db).await?;
            let saved = ops::machines::save_machine(
                &db,
                lan.as_ref(),
                mac,
                &add.fields,
                true,
                false,
                clock.now_ms(),
            )
            .await
            .map_err(flag_error)?;
            write(out, format!("added {mac} as {}\n", saved.machine.role))?;
        }
        MachinesCommand::Set(set) => {
            let db = Db::open(&set.data.data_dir).await?;
            let mac = parse_mac(&set.mac)?;
            let lan = recorded_lan(&db).await?;
            let now = clock.now_ms();
            // `--installed false` alone changes no field: nothing to save.
            let saves = set.installed.is_none() || set.fields != MachineInput::default();
            let mut reinstall = false;
            if saves {
                let saved = ops::machines::save_machine(
                    &db,
                    lan.as_ref(),
                    mac,
                    &set.fields,
                    false,
                    set.confirm,
                    now,
                )
                .await
                .map_err(|e| match e {
                    OpsError::NeedsConfirmation(question) => invalid(format!(
                        "{question}\nnothing was changed: repeat with --confirm to go ahead"
                    )),
                    other => flag_error(other),
                })?;
                reinstall = saved.reinstall;
            }
            if set.installed == Some(false) && !reinstall {
                ops::machines::reinstall_machine(&db, mac, now)
                    .await
                    .map_err(flag_error)?;
                reinstall = true;
            }
            if reinstall {
                write(
                    out,
                    format!("updated {mac}: it installs Talos at its next network boot\n"),
                )?;
            } else {
                write(out, format!("updated {mac}\n"))?;
            }
        }
        MachinesCommand::List { data, json } => {
            let db = Db::open(&data.data_dir).await?;
            let machines = db.list_machines().await?;
            if json {
                write_json(out, &machines)?;
            } else {
                write(out, machine_table(&machines))?;
            }
        }
        MachinesCommand::Remove { data, mac } => {
            let db = Db::open(&data.data_dir).await?;
            let mac = parse_mac(&mac)?;
            ops::machines::remove_machine(&db, mac, clock.now_ms())
                .await
                .map_err(flag_error)?;
            write(out, format!("removed {mac}\n"))?;
        }
        MachinesCommand::Reinstall { data, mac } => {
            let db = Db::open(&data.data_dir).await?;
            let mac = parse_mac(&mac)?;
            ops::machines::reinstall_machine(&db, mac, clock.now_ms())
                .await
                .map_err(flag_error)?;
            write(
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
                write_json(out, &events)?;
            } else if events.is_empty() {
                write(
                    out,
                    format!(
                        "no events for {mac}: bootplane has not seen or changed this machine\n"
                    ),
                )?;
            } else {
                for e in events {
                    write(
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
                write_json(out, &lines)?;
            } else if lines.is_empty() {
                write(
                    out,
                    format!(
                        "no boot log for {mac} yet: Talos streams its kernel messages to bootplane once it boots with this machine's kernel arguments (talos.logging.kernel)\n"
                    ),
                )?;
            } else {
                for line in lines {
                    write(out, boot_log_text(&line))?;
                }
            }
        }
    }
    Ok(())
}

/// The inventory as a table, every value under its heading.
fn machine_table(machines: &[crate::model::Machine]) -> String {
    let mut text = format!(
        "{:<17}  {:<12}  {:<16}  {:<18}  {:<13}  {:<9}  {:<4}  {}\n",
        "MAC", "ROLE", "HOSTNAME", "IP", "STATE", "INSTALLED", "ARCH", "LAST SEEN"
    );
    for m in machines {
        text += &format!(
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
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Mac, Role};
    use std::net::Ipv4Addr;

    fn fields() -> MachineInput {
        MachineInput {
            role: Some("controlplane".into()),
            hostname: Some("cp-1".into()),
            ip: Some("10.0.0.11/24".into()),
            gateway: Some("10.0.0.1".into()),
            ..Default::default()
        }
    }

    const MAC: &str = "52:54:00:00:00:21";

    fn mac() -> Mac {
        MAC.parse().unwrap()
    }

    fn data(dir: &std::path::Path) -> DataDir {
        DataDir {
            data_dir: dir.to_path_buf(),
        }
    }

    async fn run(cmd: MachinesCommand) -> Result<String, CliError> {
        let mut out = Vec::new();
        machines(cmd, &crate::support::clock::SystemClock, &mut out).await?;
        Ok(String::from_utf8(out).unwrap_or_default())
    }

    /// Runs `machines add` for a machine with `fields` against `dir`'s database.
    async fn add_worker(dir: &std::path::Path, fields: MachineInput) -> Result<String, CliError> {
        run(MachinesCommand::Add(MachineAdd {
            data: data(dir),
            mac: MAC.into(),
            fields,
        }))
        .await
    }

    /// Runs `machines set` with `fields` against `dir`'s database.
    async fn set(dir: &std::path::Path, fields: MachineInput) -> Result<String, CliError> {
        run(MachinesCommand::Set(MachineSet {
            data: data(dir),
            mac: MAC.into(),
            fields,
            confirm: false,
            installed: None,
        }))
        .await
    }

    async fn stored(dir: &std::path::Path) -> Option<crate::model::Machine> {
        Db::open(dir)
            .await
            .unwrap()
            .get_machine(mac())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_talos_version_pin_is_set_refused_by_its_flag_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let pin = |v: &str| MachineInput {
            talos_version: Some(v.into()),
            ..fields()
        };
        add_worker(dir.path(), pin("v1.10.9")).await.unwrap();
        let m = stored(dir.path()).await.unwrap();
        assert_eq!(m.talos_version.as_deref(), Some("v1.10.9"));
        let err = set(dir.path(), pin("1.10")).await.unwrap_err().to_string();
        assert!(err.starts_with("--talos-version: "), "{err}");
        set(dir.path(), pin("none")).await.unwrap();
        assert_eq!(stored(dir.path()).await.unwrap().talos_version, None);
    }

    #[tokio::test]
    async fn a_set_is_logged_with_what_it_changed_and_an_empty_boot_log_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let worker = MachineInput {
            role: Some("worker".into()),
            hostname: Some("w-1".into()),
            ip: Some("10.0.0.21/24".into()),
            ..fields()
        };
        add_worker(dir.path(), worker).await.unwrap();
        let rename = MachineInput {
            hostname: Some("w-9".into()),
            install_disk: Some("/dev/sdb".into()),
            ..Default::default()
        };
        set(dir.path(), rename).await.unwrap();
        let events = run(MachinesCommand::Events {
            data: data(dir.path()),
            mac: MAC.into(),
            limit: 10,
            json: false,
        })
        .await
        .unwrap();
        let last = events.lines().last().unwrap();
        assert!(
            last.ends_with("set: hostname w-1 -> w-9, install disk none -> /dev/sdb"),
            "{events}"
        );
        let log = run(MachinesCommand::Log {
            data: data(dir.path()),
            mac: MAC.into(),
            limit: 10,
            json: false,
        })
        .await
        .unwrap();
        assert!(
            log.starts_with(&format!("no boot log for {MAC} yet")),
            "{log}"
        );
    }

    #[tokio::test]
    async fn machines_list_lines_up_every_column_under_its_heading() {
        let dir = tempfile::tempdir().unwrap();
        let worker = MachineInput {
            role: Some("worker".into()),
            hostname: Some("w-1".into()),
            ip: Some("10.0.0.21/24".into()),
            ..fields()
        };
        add_worker(dir.path(), worker).await.unwrap();
        let list = MachinesCommand::List {
            data: data(dir.path()),
            json: false,
        };
        let text = run(list).await.unwrap();
        let mut lines = text.lines();
        let head = lines.next().unwrap();
        let row = lines.next().unwrap();
        for (heading, value) in [
            ("ROLE", "worker"),
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
        crate::ops::cluster::init_cluster(&db, &init, 1)
            .await
            .unwrap();
        let worker = |pin: Option<&str>| MachineInput {
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
        assert!(db.get_machine(mac()).await.unwrap().is_none());
        add_worker(dir.path(), worker(Some("v1.14.0-rc.1")))
            .await
            .unwrap();
        let m = db.get_machine(mac()).await.unwrap().unwrap();
        assert!(m.diskless);
    }

    #[tokio::test]
    async fn a_complete_controlplane_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let out = add_worker(dir.path(), fields()).await.unwrap();
        assert_eq!(out, format!("added {MAC} as controlplane\n"));
        let m = stored(dir.path()).await.unwrap();
        assert_eq!(m.role, Role::Controlplane);
        assert_eq!(m.gateway, Some(Ipv4Addr::new(10, 0, 0, 1)));
    }

    #[tokio::test]
    async fn bad_forms_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let cases: Vec<(MachineInput, &str)> = vec![
            (
                MachineInput {
                    role: Some("master".into()),
                    ..fields()
                },
                "--role",
            ),
            (
                MachineInput {
                    hostname: None,
                    ..fields()
                },
                "--hostname: a controlplane needs a hostname",
            ),
            (
                MachineInput {
                    ip: Some("10.0.0.11".into()),
                    ..fields()
                },
                "prefix",
            ),
            (
                MachineInput {
                    ip: Some("10.0.0.0/24".into()),
                    ..fields()
                },
                "network or broadcast",
            ),
            (
                MachineInput {
                    gateway: Some("10.0.1.1".into()),
                    ..fields()
                },
                "outside",
            ),
            (
                MachineInput {
                    dns: Some("1.1.1.1,x".into()),
                    ..fields()
                },
                "--dns",
            ),
            (
                MachineInput {
                    install_disk: Some("sda".into()),
                    ..fields()
                },
                "device path",
            ),
            (
                MachineInput {
                    disk_handoff: Some("reboot".into()),
                    ..fields()
                },
                "--disk-handoff",
            ),
        ];
        for (f, expected) in cases {
            let err = add_worker(dir.path(), f).await.unwrap_err().to_string();
            assert!(err.contains(expected), "{err} should mention {expected}");
        }
        assert!(stored(dir.path()).await.is_none(), "nothing stored");
    }

    /// Every flag of every command that speaks of "installed" refuses to say true.
    #[test]
    fn no_flag_of_any_command_marks_a_machine_installed() {
        use clap::{CommandFactory, Parser};
        fn walk(cmd: &clap::Command, path: Vec<String>, found: &mut Vec<Vec<String>>) {
            for arg in cmd.get_arguments() {
                if arg.get_long().is_some_and(|l| l.contains("installed")) {
                    let mut argv = path.clone();
                    argv.extend(["--mac".into(), MAC.into()]);
                    argv.extend([
                        format!("--{}", arg.get_long().unwrap_or_default()),
                        "true".into(),
                    ]);
                    found.push(argv);
                }
            }
            for sub in cmd.get_subcommands() {
                let mut p = path.clone();
                p.push(sub.get_name().to_string());
                walk(sub, p, found);
            }
        }
        let mut found = Vec::new();
        walk(
            &super::super::Cli::command(),
            vec!["bootplane".into()],
            &mut found,
        );
        assert!(!found.is_empty(), "machines set has --installed");
        for argv in found {
            let err = super::super::Cli::try_parse_from(&argv)
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(err.contains(INSTALLED_BY_NODE), "{argv:?}: {err}");
        }
    }
}
