//! DHCP: proxyDHCP (ports 67 and 4011) and full DHCP server for netboot clients.

use std::net::UdpSocket;

use tokio_util::sync::CancellationToken;

use crate::config::{BootConfig, DhcpConfig};
use crate::db::Db;
use crate::inventory::{Inventory, Neighbours, Recorder};
use crate::metrics::Metrics;
use crate::net::InterfaceInfo;

/// The sockets DHCP serves on, already bound (tests bind ephemeral ports on loopback).
#[derive(Debug)]
pub struct DhcpSockets {
    /// The DHCP server port (67).
    pub dhcp: UdpSocket,
    /// The PXE boot-server port (4011); proxy mode only.
    pub pxe: Option<UdpSocket>,
}

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("cannot bind UDP port {port}: {source}")]
    Bind { port: u16, source: std::io::Error },
}

/// Everything the DHCP service reads or reports to.
#[derive(Clone, Debug)]
pub struct DhcpDeps {
    pub config: DhcpConfig,
    pub boot: BootConfig,
    pub interface: InterfaceInfo,
    pub inventory: Inventory,
    pub recorder: Recorder,
    pub neighbours: Neighbours,
    pub metrics: Metrics,
    pub db: Db,
}

/// Binds the DHCP sockets for `config.mode` on `interface`.
pub fn bind(_config: &DhcpConfig, _interface: &InterfaceInfo) -> Result<DhcpSockets, DhcpError> {
    todo!("dhcp::bind")
}

/// Serves DHCP until `cancel` fires, then persists leases and returns.
pub async fn run(_deps: DhcpDeps, _sockets: DhcpSockets, _cancel: CancellationToken) {
    todo!("dhcp::run")
}
