//! Request packets as real DHCP wire bytes, including the ones firmware was seen sending
//! (firmware-lab.md: QEMU iPXE ROM, OVMF PXE and HTTP boot, iPXE EFI, busybox udhcpc).

use std::net::Ipv4Addr;

pub const DISCOVER: u8 = 1;
pub const REQUEST: u8 = 3;
pub const DECLINE: u8 = 4;
pub const RELEASE: u8 = 7;
pub const INFORM: u8 = 8;

/// The GUID OVMF sends for `-uuid 7e57ab1e-0000-4000-8000-000000000001`: type 0, then the
/// SMBIOS UUID with its first three fields little-endian.
pub const OVMF_GUID: [u8; 17] = [
    0x00, 0x1e, 0xab, 0x57, 0x7e, 0x00, 0x00, 0x00, 0x40, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x01,
];

/// iPXE's option 175 as the QEMU ROM and undionly.kpxe send it: bus id, version and feature
/// flags (codes from iPXE's include/ipxe/dhcp.h).
pub const IPXE_175: &[u8] = &[
    0xb1, 0x05, 0x01, 0x1a, 0xf4, 0x10, 0x00, // bus id: PCI 1af4:1000 (virtio-net)
    0xeb, 0x03, 0x01, 0x00, 0x00, // version 1.0.0
    0x10, 0x01, 0x02, // PXE extensions
    0x13, 0x01, 0x01, // HTTP
    0x15, 0x01, 0x01, // TFTP
    0x17, 0x01, 0x01, // DNS
    0x18, 0x01, 0x01, // bzImage
    0x21, 0x01, 0x01, // PXE
];

/// A BOOTREQUEST under construction.
#[derive(Clone, Debug)]
pub struct Packet {
    pub op: u8,
    pub htype: u8,
    pub hlen: u8,
    pub xid: u32,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub mac: [u8; 6],
    pub options: Vec<(u8, Vec<u8>)>,
}

impl Packet {
    pub fn new(kind: u8, mac: [u8; 6]) -> Packet {
        Packet {
            op: 1,
            htype: 1,
            hlen: 6,
            xid: 0x1234_5678,
            flags: 0,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            mac,
            options: vec![(53, vec![kind])],
        }
    }

    pub fn opt(mut self, code: u8, data: impl AsRef<[u8]>) -> Packet {
        self.options.push((code, data.as_ref().to_vec()));
        self
    }

    pub fn requested(self, ip: Ipv4Addr) -> Packet {
        self.opt(50, ip.octets())
    }

    pub fn server(self, ip: Ipv4Addr) -> Packet {
        self.opt(54, ip.octets())
    }

    pub fn ciaddr(mut self, ip: Ipv4Addr) -> Packet {
        self.ciaddr = ip;
        self
    }

    pub fn giaddr(mut self, ip: Ipv4Addr) -> Packet {
        self.giaddr = ip;
        self
    }

    pub fn xid(mut self, xid: u32) -> Packet {
        self.xid = xid;
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut b = vec![self.op, self.htype, self.hlen, 0];
        b.extend_from_slice(&self.xid.to_be_bytes());
        b.extend_from_slice(&[0, 4]); // secs
        b.extend_from_slice(&self.flags.to_be_bytes());
        b.extend_from_slice(&self.ciaddr.octets());
        b.extend_from_slice(&[0; 4]); // yiaddr
        b.extend_from_slice(&[0; 4]); // siaddr
        b.extend_from_slice(&self.giaddr.octets());
        b.extend_from_slice(&self.mac);
        b.extend_from_slice(&[0; 10]); // chaddr padding
        b.extend_from_slice(&[0; 64]); // sname
        b.extend_from_slice(&[0; 128]); // file
        b.extend_from_slice(&[99, 130, 83, 99]);
        for (code, data) in &self.options {
            for chunk in data.chunks(255) {
                b.push(*code);
                b.push(chunk.len() as u8);
                b.extend_from_slice(chunk);
            }
            if data.is_empty() {
                b.extend_from_slice(&[*code, 0]);
            }
        }
        b.push(255);
        b
    }
}

/// QEMU's iPXE ROM under SeaBIOS (undionly.kpxe sends the same bytes).
pub fn ipxe_bios(kind: u8, mac: [u8; 6]) -> Packet {
    Packet::new(kind, mac)
        .opt(57, 1472u16.to_be_bytes())
        .opt(93, [0, 0])
        .opt(94, [1, 2, 1])
        .opt(60, "PXEClient:Arch:00000:UNDI:002001")
        .opt(77, "iPXE")
        .opt(
            55,
            [
                1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 119, 128, 129, 130, 131, 132, 133, 134,
                135, 175, 203,
            ],
        )
        .opt(175, IPXE_175)
        .opt(61, [1, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]])
}

/// OVMF's own PXE (IPv4), as firmware-lab.md saw it.
pub fn ovmf_pxe(kind: u8, mac: [u8; 6]) -> Packet {
    Packet::new(kind, mac)
        .opt(57, 1472u16.to_be_bytes())
        .opt(
            55,
            [
                1, 2, 3, 4, 5, 6, 12, 13, 15, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51, 54, 58,
                59, 60, 66, 67, 97, 128, 129, 130, 131, 132, 133, 134, 135,
            ],
        )
        .opt(97, OVMF_GUID)
        .opt(94, [1, 3, 0])
        .opt(93, [0, 7])
        .opt(60, "PXEClient:Arch:00007:UNDI:003000")
}

/// iPXE EFI (ROM, ipxe.efi, snponly.efi).
pub fn ipxe_efi(kind: u8, mac: [u8; 6]) -> Packet {
    Packet::new(kind, mac)
        .opt(93, [0, 7])
        .opt(94, [1, 3, 10])
        .opt(60, "PXEClient:Arch:00007:UNDI:003010")
        .opt(77, "iPXE")
        .opt(175, IPXE_175)
}

/// OVMF's HTTP boot (tried after PXE failed).
pub fn ovmf_http(kind: u8, mac: [u8; 6]) -> Packet {
    Packet::new(kind, mac)
        .opt(97, OVMF_GUID)
        .opt(94, [1, 3, 0])
        .opt(93, [0, 16])
        .opt(60, "HTTPClient:Arch:00016:UNDI:003000")
}

/// An arm64 UEFI PXE client.
pub fn arm64_pxe(kind: u8, mac: [u8; 6]) -> Packet {
    Packet::new(kind, mac)
        .opt(93, [0, 11])
        .opt(60, "PXEClient:Arch:00011:UNDI:003000")
}

/// busybox udhcpc as the stand-in Talos initramfs runs it: no option 60.
pub fn udhcpc(kind: u8, mac: [u8; 6]) -> Packet {
    Packet::new(kind, mac)
        .opt(61, [1, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]])
        .opt(57, 576u16.to_be_bytes())
        .opt(55, [1, 3, 6, 12, 15, 28, 42])
}
