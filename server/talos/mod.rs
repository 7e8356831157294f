//! Talos: the facts bootplane acts on (kernel arguments, asset names) and, later, secrets,
//! machine configs and the Talos API client.

pub mod api;
pub mod config;
pub mod double;
pub mod kernel;
pub mod kmsg;
pub mod patch;
pub mod peers;
pub mod secrets;
pub mod sink;

pub use kernel::{kernel_args, minor_version, Arch};
