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
