//! Minimal IPv6 router advertisements, sent only in answer to router solicitations.
//!
//! iPXE configures IPv4 and IPv6 together and waits about 16 s for a router advertisement
//! before it gives up on IPv6. On an IPv4-only segment every boot pays that wait. bootplane
//! answers a solicitation with an advertisement that says nothing: router lifetime 0 (not a
//! default router), no prefixes, no managed/other flags. That ends iPXE's wait and changes
//! nothing for other hosts.

use std::io;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio_util::sync::CancellationToken;

use crate::net::InterfaceInfo;

const ROUTER_SOLICITATION: u8 = 133;
const ROUTER_ADVERTISEMENT: u8 = 134;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
/// RFC 4861 MIN_DELAY_BETWEEN_RAS is 3 s; a boot storm's solicitations are answered by one
/// advertisement per window, which every waiting client hears.
const MIN_INTERVAL: Duration = Duration::from_millis(500);

/// Whether a received ICMPv6 message is a well-formed router solicitation.
pub fn is_router_solicitation(packet: &[u8]) -> bool {
    packet.len() >= 8 && packet[0] == ROUTER_SOLICITATION && packet[1] == 0
}

/// The advertisement: ICMPv6 header (checksum left to the kernel), hop limit 64, no flags,
/// lifetime 0, then a source link-layer address option when the MAC is known.
pub fn advertisement(mac: Option<[u8; 6]>) -> Vec<u8> {
    let mut ra = vec![ROUTER_ADVERTISEMENT, 0, 0, 0, 64, 0, 0, 0];
    ra.extend_from_slice(&[0; 8]); // reachable time, retrans timer
    if let Some(mac) = mac {
        ra.extend_from_slice(&[1, 1]);
        ra.extend_from_slice(&mac);
    }
    ra
}

/// Opens the raw ICMPv6 socket on `iface`. Needs CAP_NET_RAW.
pub fn bind(iface: &InterfaceInfo) -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    socket.bind_device(Some(iface.name.as_bytes()))?;
    socket.set_multicast_if_v6(iface.index)?;
    socket.set_multicast_hops_v6(255)?;
    socket.set_unicast_hops_v6(255)?;
    socket.set_multicast_loop_v6(false)?;
    socket.join_multicast_v6(&ALL_ROUTERS, iface.index)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn interface_mac(name: &str) -> Option<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/address")).ok()?;
    let mac: crate::model::Mac = text.trim().parse().ok()?;
    Some(mac.0)
}

/// Answers router solicitations until `cancel` fires.
pub async fn run(socket: Socket, iface: InterfaceInfo, cancel: CancellationToken) {
    // A raw ICMPv6 socket is a datagram socket; tokio's UdpSocket drives any of those.
    let socket = match tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(socket)) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "router advertisements disabled");
            return;
        }
    };
    let ra = advertisement(interface_mac(&iface.name));
    let dest = SocketAddrV6::new(ALL_NODES, 0, 0, iface.index);
    let mut last_sent: Option<Instant> = None;
    let mut buf = [0u8; 1500];
    loop {
        let received = tokio::select! {
            _ = cancel.cancelled() => return,
            r = socket.recv_from(&mut buf) => r,
        };
        let (len, from) = match received {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "icmpv6 receive failed");
                continue;
            }
        };
        let packet = &buf[..len];
        if !is_router_solicitation(packet) {
            continue;
        }
        if last_sent.is_some_and(|t| t.elapsed() < MIN_INTERVAL) {
            continue;
        }
        match socket.send_to(&ra, dest).await {
            Ok(_) => {
                last_sent = Some(Instant::now());
                tracing::debug!(from = ?from, "router advertisement sent");
            }
            Err(e) => tracing::warn!(error = %e, from = ?from,
                "cannot send router advertisement (does the interface have an IPv6 link-local address?)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertisement_says_nothing_but_ends_the_wait() {
        let ra = advertisement(Some([0x52, 0x54, 0, 1, 2, 3]));
        assert_eq!(ra[0], ROUTER_ADVERTISEMENT);
        assert_eq!(ra[5], 0, "no managed/other flags");
        assert_eq!(
            &ra[6..8],
            &[0, 0],
            "router lifetime 0: not a default router"
        );
        assert_eq!(&ra[16..18], &[1, 1], "source link-layer address option");
        assert_eq!(&ra[18..], &[0x52, 0x54, 0, 1, 2, 3]);
        assert_eq!(advertisement(None).len(), 16);
    }

    #[test]
    fn only_solicitations_are_answered() {
        assert!(is_router_solicitation(&[133, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!is_router_solicitation(&[134, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!is_router_solicitation(&[133, 1, 0, 0, 0, 0, 0, 0]));
        assert!(!is_router_solicitation(&[133, 0, 0]));
    }
}
