//! Talos: the facts bootplane acts on (kernel arguments, asset names) and, later, secrets,
//! machine configs and the Talos API client.

pub mod api;
pub mod config;
pub mod kernel;
pub mod patch;
pub mod secrets;

pub use kernel::{kernel_args, minor_version, Arch};
