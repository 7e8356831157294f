//! DHCP packets as a machine's firmware (or an attacker) sends them.

use std::net::{Ipv4Addr, SocketAddr};

/// A PXE client's packet (UEFI x64, option 60/93/97) with the fields an attacker chooses.
pub fn pxe_packet(
    kind: dhcproto::v4::MessageType,
    mac: [u8; 6],
    ciaddr: Ipv4Addr,
    requested: Option<Ipv4Addr>,
) -> Vec<u8> {
    use dhcproto::v4::{DhcpOption, Message, Opcode};
    use dhcproto::{Encodable, Encoder};
    let mut msg = Message::default();
    msg.set_opcode(Opcode::BootRequest)
        .set_xid(rand::random())
        .set_chaddr(&mac)
        .set_ciaddr(ciaddr);
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    insert_pxe_options(opts);
    if let Some(ip) = requested {
        opts.insert(DhcpOption::RequestedIpAddress(ip));
    }
    let mut buf = Vec::new();
    msg.encode(&mut Encoder::new(&mut buf)).unwrap();
    buf
}

/// What UEFI x64 PXE firmware says of itself: options 60 (`PXEClient:Arch:00007…`), 93
/// (architecture 7) and 97 (a zero client UUID).
pub fn insert_pxe_options(opts: &mut dhcproto::v4::DhcpOptions) {
    use dhcproto::v4::{DhcpOption, UnknownOption};
    opts.insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00007:UNDI:003016".to_vec(),
    ));
    opts.insert(DhcpOption::Unknown(UnknownOption::new(
        93.into(),
        vec![0, 7],
    )));
    opts.insert(DhcpOption::Unknown(UnknownOption::new(
        97.into(),
        [0u8; 17].to_vec(),
    )));
}

pub async fn send(to: SocketAddr, packet: &[u8]) {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(packet, to).await.unwrap();
}
