//! DHCP: proxyDHCP (ports 67 and 4011) and full DHCP server for netboot clients.
//!
//! - `wire`: bytes to `Request` (dhcproto header decode behind `catch_unwind`, raw option index)
//!   and built replies back to bytes.
//! - `decide`: the pure decision table (proxy and full mode, boot file by raw option 93, iPXE
//!   detection, lease rules, reply destination).
//! - `leases`: the in-memory lease table, authoritative; persisted in batches.
//! - `socket`: sockets with IP_PKTINFO, SO_BINDTODEVICE, SO_BROADCAST.
//! - `server`: the receive loops and the lease flusher.
//!
//! The hot path (decode, decide, encode, send) never waits on SQLite: it reads the inventory
//! snapshot, hands events to the `Recorder` and marks leases dirty for the flusher.

use std::net::UdpSocket;

use tokio_util::sync::CancellationToken;

use crate::config::{BootConfig, DhcpConfig, DhcpMode};
use crate::db::Db;
use crate::inventory::{Inventory, Neighbours, Recorder};
use crate::net::InterfaceInfo;
use crate::support::metrics::Metrics;

pub(crate) mod decide;
pub(crate) mod leases;
mod server;
mod socket;
pub(crate) mod wire;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;

/// The sockets DHCP serves on, already bound (tests bind ephemeral ports on loopback).
#[derive(Debug)]
pub struct DhcpSockets {
    /// The DHCP server port (67).
    pub dhcp: UdpSocket,
    /// The PXE boot-server port (4011). `bind` opens it in proxy and full mode; full mode runs
    /// without it if the port is taken.
    pub pxe: Option<UdpSocket>,
}

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error(
        "cannot bind UDP port {port}: permission denied; serving DHCP needs root or \
         CAP_NET_BIND_SERVICE: run bootplane with sudo, grant the capability once with \
         `sudo setcap 'cap_net_bind_service,cap_net_raw=+ep' <path to the bootplane binary>`, \
         or pass --dhcp-mode off"
    )]
    Permission { port: u16 },
    #[error(
        "cannot bind UDP port {port}: it is already in use; another DHCP server on this host \
         (e.g. dnsmasq, ISC dhcpd, or a libvirt network's dnsmasq) holds it: stop that server, \
         or pass --dhcp-mode off"
    )]
    InUse { port: u16 },
    #[error("cannot bind UDP port {port}: {source}")]
    Bind { port: u16, source: std::io::Error },
    #[error("cannot set up the DHCP socket for UDP port {port}: {source}")]
    Socket { port: u16, source: std::io::Error },
    #[error("DHCP mode is off: there is nothing to bind")]
    Disabled,
}

impl DhcpError {
    /// Classifies a `bind(2)` failure so the message says what to do about it.
    pub fn from_bind(port: u16, source: std::io::Error) -> DhcpError {
        use nix::libc::{EACCES, EADDRINUSE, EPERM};
        match source.raw_os_error() {
            Some(EACCES | EPERM) => DhcpError::Permission { port },
            Some(EADDRINUSE) => DhcpError::InUse { port },
            _ => DhcpError::Bind { port, source },
        }
    }
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

/// Binds the DHCP sockets for `config.mode` on `interface`: `0.0.0.0:<port>` and
/// `0.0.0.0:<pxe_port>`, each with SO_BINDTODEVICE, SO_BROADCAST, SO_REUSEADDR, IP_PKTINFO
/// and a large receive buffer.
pub fn bind(config: &DhcpConfig, interface: &InterfaceInfo) -> Result<DhcpSockets, DhcpError> {
    if config.mode == DhcpMode::Off {
        return Err(DhcpError::Disabled);
    }
    let dhcp = socket::bind(config.port, interface)?;
    let pxe = match socket::bind(config.pxe_port, interface) {
        Ok(sock) => Some(sock),
        Err(e) if config.mode == DhcpMode::Full => {
            tracing::warn!(error = %e, "serving full DHCP without the PXE boot-server port");
            None
        }
        Err(e) => return Err(e),
    };
    Ok(DhcpSockets { dhcp, pxe })
}

/// Serves DHCP until `cancel` fires, then persists leases and returns.
pub async fn run(deps: DhcpDeps, sockets: DhcpSockets, cancel: CancellationToken) {
    server::run(deps, sockets, cancel).await
}
