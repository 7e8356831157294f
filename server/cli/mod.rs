//! Command-line interface: `serve`, and the `machines`, `cluster` and `images` commands on
//! the same database. Every change goes through `ops`, so the CLI keeps the rules the UI and
//! the API keep, with the same messages (field errors named by their flags).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{ServeOptions, DEFAULT_DATA_DIR};
use crate::db::DbError;
use crate::model::Mac;
use crate::ops::OpsError;

mod cluster;
mod images;
mod machines;
mod output;
pub use cluster::{cluster, ClusterCommand, ClusterFields, PatchCommand};
pub use images::{images, ImagesAdd, ImagesCommand, ImagesDir};
pub use machines::{machines, MachineAdd, MachineSet, MachinesCommand};
pub use output::write_private;

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
fn flag_error(e: OpsError) -> CliError {
    match e {
        OpsError::Invalid(errors) => invalid(
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
        OpsError::Db(e) => CliError::Db(e),
        other => invalid(other.to_string()),
    }
}

fn parse_mac(text: &str) -> Result<Mac, CliError> {
    text.parse::<Mac>()
        .map_err(|e| invalid(format!("--mac {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every flag of every command says what it takes in `--help`.
    #[test]
    fn every_flag_of_every_command_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, bare: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    bare.push(format!("{path} --{}", arg.get_long().unwrap_or(id)));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), bare);
            }
        }
        let mut bare = Vec::new();
        walk(&Cli::command(), "bootplane", &mut bare);
        assert!(bare.is_empty(), "flags without help: {bare:#?}");
    }

    /// `cluster init --help` names the Talos version a cluster gets when none is given.
    #[test]
    fn cluster_init_help_names_the_default_talos_version() {
        let mut cli = Cli::command();
        let init = cli
            .find_subcommand_mut("cluster")
            .and_then(|c| c.find_subcommand_mut("init"))
            .expect("cluster init")
            .render_help()
            .to_string();
        let line = init
            .lines()
            .skip_while(|l| !l.contains("--talos-version"))
            .take(3)
            .collect::<String>();
        assert!(
            line.contains(crate::config::DEFAULT_TALOS_VERSION),
            "{line}"
        );
    }

    fn iface() -> crate::net::InterfaceInfo {
        crate::net::InterfaceInfo {
            name: "br0".into(),
            index: 3,
            cidr: "10.77.0.1/24".parse().unwrap(),
            gateway: None,
        }
    }

    /// The start-up hint for missing boot assets is a command that runs as printed: it names
    /// a source, and the data and images directories `serve` was given.
    #[test]
    fn the_missing_assets_hint_is_a_command_that_parses_with_serves_directories() {
        let options = ServeOptions {
            data_dir: Some("/srv/boot data".into()),
            images_dir: Some("/srv/images".into()),
            ..Default::default()
        };
        let config = crate::config::Config::resolve(options, iface()).unwrap();
        let hint = config.images_add_command("v1.13.9", "amd64");
        // A shell's word splitting, for the quoting the hint uses.
        let mut argv = Vec::new();
        let mut word = String::new();
        let mut quoted = false;
        for c in hint.chars() {
            match c {
                '\'' => quoted = !quoted,
                ' ' if !quoted => argv.push(std::mem::take(&mut word)),
                c => word.push(c),
            }
        }
        argv.push(word);
        assert!(hint.contains("'/srv/boot data'"), "{hint}");
        let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{hint}: {e}"));
        let Command::Images(ImagesCommand::Add(add)) = cli.command else {
            panic!("{hint} is no images add");
        };
        assert_eq!(add.version, "v1.13.9");
        assert_eq!(add.arch, "amd64");
        assert!(add.release, "{hint} names a source");
        assert_eq!(add.data.data_dir, PathBuf::from("/srv/boot data"), "{hint}");
        assert_eq!(
            add.images.images_dir,
            PathBuf::from("/srv/images"),
            "{hint}"
        );
        // The defaults (relative to where serve started) are named as absolute paths, so the
        // command runs from any directory.
        let config = crate::config::Config::resolve(ServeOptions::default(), iface()).unwrap();
        let hint = config.images_add_command("v1.13.9", "amd64");
        let data = std::path::absolute("./data").unwrap();
        assert!(
            hint.contains(&format!("--data-dir {}", data.display())),
            "{hint}"
        );
        assert!(data.is_absolute());
    }
}
