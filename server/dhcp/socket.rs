//! UDP sockets with IP_PKTINFO: which interface and local address a request arrived on, and
//! replies sent from that address out of that interface.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

use nix::libc;
use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    SockaddrIn,
};
use socket2::{Domain, Protocol, Socket, Type};

use super::DhcpError;
use crate::net::InterfaceInfo;

/// Receive buffer asked for, so bursts of thousands of DISCOVERs queue instead of dropping.
/// The kernel caps it at `net.core.rmem_max`.
const RECV_BUFFER: usize = 16 << 20;

/// Binds `0.0.0.0:port` (binding the interface address would miss 255.255.255.255 broadcasts),
/// tied to `interface` with SO_BINDTODEVICE.
pub fn bind(port: u16, interface: &InterfaceInfo) -> Result<UdpSocket, DhcpError> {
    let setup = |source| DhcpError::Socket { port, source };
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(setup)?;
    sock.set_reuse_address(true).map_err(setup)?;
    sock.set_broadcast(true).map_err(setup)?;
    // SO_RCVBUFFORCE passes net.core.rmem_max (often only 208 KiB) when we have
    // CAP_NET_ADMIN; otherwise take what the kernel allows.
    if setsockopt(&sock, sockopt::RcvBufForce, &RECV_BUFFER).is_err() {
        if let Err(e) = sock.set_recv_buffer_size(RECV_BUFFER) {
            tracing::warn!(port, error = %e, "cannot enlarge the DHCP receive buffer");
        }
    }
    // Linux 5.7 and later allow SO_BINDTODEVICE without CAP_NET_RAW; older kernels refuse it.
    // Either way it is only a filter: packets from other interfaces are also dropped by their
    // IP_PKTINFO index, so a refusal costs nothing but a few wasted wake-ups.
    if let Err(e) = sock.bind_device(Some(interface.name.as_bytes())) {
        tracing::warn!(port, interface = %interface.name, error = %e,
            "cannot bind the DHCP socket to its interface; filtering by interface index instead");
    }
    enable_pktinfo(&sock).map_err(setup)?;
    let addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
    sock.bind(&addr.into())
        .map_err(|source| DhcpError::from_bind(port, source))?;
    sock.set_nonblocking(true).map_err(setup)?;
    Ok(sock.into())
}

pub fn enable_pktinfo(fd: &impl std::os::fd::AsFd) -> io::Result<()> {
    setsockopt(fd, sockopt::Ipv4PacketInfo, &true).map_err(io::Error::from)
}

/// One received datagram's metadata.
#[derive(Clone, Copy, Debug)]
pub struct Received {
    pub len: usize,
    pub src: SocketAddrV4,
    /// The local address the packet reached (IP_PKTINFO `ipi_spec_dst`), if known.
    pub local: Option<Ipv4Addr>,
    /// The receiving interface (IP_PKTINFO `ipi_ifindex`), 0 if unknown.
    pub ifindex: u32,
}

/// Reads one datagram; `WouldBlock` when none is queued.
pub fn recv(sock: &impl AsRawFd, buf: &mut [u8], cmsg: &mut Vec<u8>) -> io::Result<Received> {
    cmsg.clear();
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrIn>(
        sock.as_raw_fd(),
        &mut iov,
        Some(cmsg),
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let src = msg
        .address
        .map(|a| SocketAddrV4::new(a.ip(), a.port()))
        .unwrap_or_else(|| SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    let mut local = None;
    let mut ifindex = 0;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::Ipv4PacketInfo(info) = c {
                ifindex = u32::try_from(info.ipi_ifindex).unwrap_or(0);
                let spec = Ipv4Addr::from(u32::from_be(info.ipi_spec_dst.s_addr));
                local = (!spec.is_unspecified() && !spec.is_broadcast()).then_some(spec);
            }
        }
    }
    Ok(Received {
        len: msg.bytes,
        src,
        local,
        ifindex,
    })
}

/// Sends one datagram from `source` (when given) out of interface `ifindex` (when non-zero).
pub fn send(
    sock: &impl AsRawFd,
    bytes: &[u8],
    dest: SocketAddrV4,
    source: Option<Ipv4Addr>,
    ifindex: u32,
) -> io::Result<usize> {
    let iov = [IoSlice::new(bytes)];
    let addr = SockaddrIn::from(dest);
    let info = libc::in_pktinfo {
        ipi_ifindex: i32::try_from(ifindex).unwrap_or(0),
        ipi_spec_dst: libc::in_addr {
            s_addr: u32::from(source.unwrap_or(Ipv4Addr::UNSPECIFIED)).to_be(),
        },
        ipi_addr: libc::in_addr { s_addr: 0 },
    };
    let cmsgs = [ControlMessage::Ipv4PacketInfo(&info)];
    let with_info = source.is_some() || ifindex != 0;
    let cmsgs: &[ControlMessage<'_>] = if with_info { &cmsgs } else { &[] };
    sendmsg(
        sock.as_raw_fd(),
        &iov,
        cmsgs,
        MsgFlags::MSG_DONTWAIT,
        Some(&addr),
    )
    .map_err(io::Error::from)
}
