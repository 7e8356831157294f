//! The wire edge: datagram bytes become a `Request`, a built reply becomes bytes.
//!
//! The fixed BOOTP header is read in place at its RFC 2131 offsets (dhcproto's decoder decoded
//! every option as well, a share of a storm's CPU, and has panicked on fuzzed input before,
//! bluecatengineering/dhcproto#77). Option values are read from a lossless TLV index of the raw
//! bytes instead of dhcproto's option map: dhcproto stops parsing
//! options at the first one it cannot decode (a hostname that is not UTF-8, say), which would hide
//! option 60/93 from us, and it re-orders relay sub-options, which RFC 3046 wants echoed as sent.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, HType, Message, MessageType, Opcode, OptionCode, UnknownOption};
use dhcproto::{Encodable, Encoder};

use crate::model::Mac;

/// BOOTP header length before the magic cookie.
const HEADER_LEN: usize = 236;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// RFC 1542: relays and old clients expect BOOTP messages of at least 300 bytes.
const MIN_REPLY_LEN: usize = 300;

pub const OPT_HOSTNAME: u8 = 12;
pub const OPT_REQUESTED_IP: u8 = 50;
pub const OPT_MESSAGE_TYPE: u8 = 53;
pub const OPT_SERVER_ID: u8 = 54;
pub const OPT_VENDOR_CLASS: u8 = 60;
pub const OPT_CLIENT_ID: u8 = 61;
pub const OPT_USER_CLASS: u8 = 77;
pub const OPT_RELAY_AGENT: u8 = 82;
pub const OPT_CLIENT_ARCH: u8 = 93;
pub const OPT_CLIENT_GUID: u8 = 97;
/// iPXE's encapsulated options (dnsmasq idiom `dhcp-match=set:ipxe,175`).
pub const OPT_IPXE: u8 = 175;
/// Sub-option of 175: "no-pxedhcp", skip waiting for ProxyDHCP offers.
pub const IPXE_NO_PXEDHCP: u8 = 176;

/// PXE vendor options (option 43): sub-option 6 (discovery control) = 8 ("skip discovery, boot
/// the file in this packet"), then the end marker.
pub const PXE_VENDOR_OPTS: [u8; 4] = [6, 1, 8, 255];

/// What the client said it is, from option 60.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientClass {
    /// `PXEClient...`: firmware PXE, or iPXE (which always says PXEClient).
    Pxe,
    /// `HTTPClient...`: UEFI HTTP boot.
    Http,
    /// Anything else, or no option 60: an ordinary DHCP client.
    Plain,
}

/// Option 97 (client machine identifier) as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Guid {
    Absent,
    /// Type 0 plus 16 bytes, as RFC 4578 requires.
    Valid([u8; 17]),
    Invalid,
}

/// A decoded, validated BOOTREQUEST.
#[derive(Clone, Debug)]
pub struct Request {
    pub xid: u32,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub mac: Mac,
    pub kind: MessageType,
    pub class: ClientClass,
    /// Raw option 93 (first entry); never dhcproto's `Architecture` names (7 is `BC` there).
    pub arch: Option<u16>,
    pub ipxe: bool,
    pub guid: Guid,
    pub requested_ip: Option<Ipv4Addr>,
    pub server_id: Option<Ipv4Addr>,
    pub hostname: Option<String>,
    /// Option 61, echoed (RFC 6842).
    pub client_id: Option<Vec<u8>>,
    /// Option 82, echoed byte for byte (RFC 3046).
    pub relay_agent: Option<Vec<u8>>,
}

impl Request {
    pub fn is_netboot(&self) -> bool {
        self.class != ClientClass::Plain
    }

    /// The SMBIOS UUID from option 97, in the usual text form; `None` when absent or all zero.
    pub fn smbios_uuid(&self) -> Option<String> {
        match &self.guid {
            Guid::Valid(bytes) => smbios_uuid(bytes),
            _ => None,
        }
    }
}

/// Decodes and validates a datagram. `Err` carries the drop reason for metrics.
pub fn parse(bytes: &[u8]) -> Result<Request, &'static str> {
    if bytes.len() < HEADER_LEN + MAGIC.len() || bytes[HEADER_LEN..HEADER_LEN + 4] != MAGIC {
        return Err("malformed");
    }
    // The fixed header, read in place (RFC 2131 figure 1): op, htype, hlen, then xid at 4,
    // flags at 10, ciaddr at 12, giaddr at 24, chaddr at 28.
    if bytes[0] != 1 {
        return Err("not-request");
    }
    if bytes[1] != 1 || bytes[2] != 6 {
        return Err("hardware-type");
    }
    let word = |at: usize| [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&bytes[28..34]);
    if mac == [0; 6] || mac[0] & 1 == 1 {
        return Err("bad-mac");
    }
    let opts = RawOptions::parse(&bytes[HEADER_LEN + 4..]).ok_or("malformed")?;
    let kind = match opts.get(OPT_MESSAGE_TYPE) {
        Some([t]) => MessageType::from(*t),
        Some(_) => return Err("malformed"),
        None => return Err("bootp"),
    };
    let vendor_class = opts.get(OPT_VENDOR_CLASS);
    let class = match vendor_class {
        Some(v) if v.starts_with(b"PXEClient") => ClientClass::Pxe,
        Some(v) if v.starts_with(b"HTTPClient") => ClientClass::Http,
        _ => ClientClass::Plain,
    };
    let arch = match opts.get(OPT_CLIENT_ARCH) {
        Some(a) if a.len() >= 2 => Some(u16::from_be_bytes([a[0], a[1]])),
        Some(_) => return Err("malformed"),
        // Some old ROMs omit 93; their vendor class still says `PXEClient:Arch:00000:...`.
        None => vendor_class.and_then(arch_from_vendor_class),
    };
    let ipxe =
        opts.get(OPT_IPXE).is_some() || opts.get(OPT_USER_CLASS).is_some_and(user_class_is_ipxe);
    let guid = match opts.get(OPT_CLIENT_GUID) {
        None => Guid::Absent,
        Some(g) if g.len() == 17 && g[0] == 0 => {
            let mut out = [0u8; 17];
            out.copy_from_slice(g);
            Guid::Valid(out)
        }
        Some(_) => Guid::Invalid,
    };
    let ipv4 = |code| match opts.get(code) {
        Some([a, b, c, d]) => Some(Ipv4Addr::new(*a, *b, *c, *d)),
        _ => None,
    };
    let hostname = opts
        .get(OPT_HOSTNAME)
        .and_then(|h| std::str::from_utf8(h).ok())
        .map(|h| h.trim_end_matches('\0'))
        .filter(|h| !h.is_empty() && h.len() <= 63)
        .map(str::to_string);
    Ok(Request {
        xid: u32::from_be_bytes(word(4)),
        flags: u16::from_be_bytes([bytes[10], bytes[11]]),
        ciaddr: Ipv4Addr::from(word(12)),
        giaddr: Ipv4Addr::from(word(24)),
        mac: Mac(mac),
        kind,
        class,
        arch,
        ipxe,
        guid,
        requested_ip: ipv4(OPT_REQUESTED_IP),
        server_id: ipv4(OPT_SERVER_ID),
        hostname,
        client_id: opts.get(OPT_CLIENT_ID).map(<[u8]>::to_vec),
        relay_agent: opts.get(OPT_RELAY_AGENT).map(<[u8]>::to_vec),
    })
}

/// `PXEClient:Arch:00007:UNDI:003000` → 7.
fn arch_from_vendor_class(vc: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(vc).ok()?;
    let rest = text.split(":Arch:").nth(1)?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    if digits.is_empty() {
        return None;
    }
    digits.parse().ok()
}

/// Option 77 is `iPXE` as iPXE sends it (raw), or an RFC 3004 list of length-prefixed classes
/// of which one is `iPXE`.
pub fn user_class_is_ipxe(uc: &[u8]) -> bool {
    if uc == b"iPXE" {
        return true;
    }
    let mut rest = uc;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len);
        if len == 0 || len > tail.len() {
            return false;
        }
        if &tail[..len] == b"iPXE" {
            return true;
        }
        rest = &tail[len..];
    }
    false
}

/// Formats option 97's 16 UUID bytes (after the type byte) as SMBIOS does: the first three
/// fields arrive little-endian, so `00 1e ab 57 7e 00 00 00 40 80 ...` is `7e57ab1e-0000-4000-80..`.
pub fn smbios_uuid(guid: &[u8; 17]) -> Option<String> {
    let b = &guid[1..];
    if b.iter().all(|x| *x == 0) {
        return None;
    }
    // SMBIOS stores the first three fields little-endian. Written by hand: this runs for every
    // PXE packet, and `format!` with 16 arguments was a visible share of a DHCP storm's CPU.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let order = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];
    let mut text = String::with_capacity(36);
    for (i, &at) in order.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            text.push('-');
        }
        text.push(char::from(HEX[usize::from(b[at] >> 4)]));
        text.push(char::from(HEX[usize::from(b[at] & 0xf)]));
    }
    Some(text)
}

/// Options as they appear on the wire, by code; repeated codes are concatenated (RFC 3396).
/// One copy of the options field and a table by code: parsing allocates twice whatever the
/// packet holds (this runs for every packet), and concatenation stays linear in its size.
#[derive(Debug)]
pub struct RawOptions {
    data: Vec<u8>,
    /// Per code: (start, length) in `data`; length `u32::MAX` when absent.
    at: Box<[(u32, u32); 256]>,
}

impl Default for RawOptions {
    fn default() -> Self {
        RawOptions {
            data: Vec::new(),
            at: Box::new([(0, u32::MAX); 256]),
        }
    }
}

impl RawOptions {
    /// `None` when an option runs past the end of the packet.
    pub fn parse(bytes: &[u8]) -> Option<RawOptions> {
        let mut options = RawOptions {
            data: bytes.to_vec(),
            ..RawOptions::default()
        };
        // Pass 1: where each option's data lies; codes seen more than once are noted.
        let mut segments: Vec<(u8, u32, u32)> = Vec::new();
        let mut repeated = false;
        let mut i = 0usize;
        while let Some(&code) = bytes.get(i) {
            match code {
                0 => i += 1,
                255 => break,
                _ => {
                    let len = usize::from(*bytes.get(i + 1)?);
                    let start = i + 2;
                    if bytes.len() < start + len {
                        return None;
                    }
                    let slot = &mut options.at[usize::from(code)];
                    repeated |= slot.1 != u32::MAX;
                    // Both fit in u32: a datagram is at most 64 KiB.
                    *slot = (start as u32, len as u32);
                    segments.push((code, start as u32, len as u32));
                    i = start + len;
                }
            }
        }
        // Pass 2 (rare): a repeated code's segments, in order, appended as one value.
        if repeated {
            let mut count = [0u16; 256];
            for (code, ..) in &segments {
                count[usize::from(*code)] += 1;
            }
            segments.retain(|(code, ..)| count[usize::from(*code)] > 1);
            segments.sort_by_key(|(code, ..)| *code);
            let mut current: Option<u8> = None;
            for (code, start, len) in segments {
                if current != Some(code) {
                    current = Some(code);
                    options.at[usize::from(code)] = (options.data.len() as u32, 0);
                }
                let (start, len) = (start as usize, len as usize);
                options.data.extend_from_within(start..start + len);
                options.at[usize::from(code)].1 += len as u32;
            }
        }
        Some(options)
    }

    pub fn get(&self, code: u8) -> Option<&[u8]> {
        let (start, len) = self.at[usize::from(code)];
        if len == u32::MAX {
            return None;
        }
        self.data.get(start as usize..start as usize + len as usize)
    }
}

/// A reply under construction: a dhcproto message with the request's identity copied in.
pub fn reply_skeleton(req: &Request, kind: MessageType, server_id: Ipv4Addr) -> Message {
    let mut msg = Message::default();
    msg.set_opcode(Opcode::BootReply)
        .set_htype(HType::Eth)
        .set_xid(req.xid)
        .set_flags(req.flags.into())
        .set_giaddr(req.giaddr)
        .set_chaddr(&req.mac.0);
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ServerIdentifier(server_id));
    if let Some(id) = &req.client_id {
        opts.insert(DhcpOption::ClientIdentifier(id.clone()));
    }
    msg
}

/// Option 175 with sub-option 176 (no-pxedhcp) = 1.
pub fn ipxe_no_pxedhcp() -> DhcpOption {
    DhcpOption::Unknown(UnknownOption::new(
        OptionCode::Unknown(OPT_IPXE),
        vec![IPXE_NO_PXEDHCP, 1, 1],
    ))
}

/// Encodes a reply, padded to the BOOTP minimum size. `relay_agent` is the request's option
/// 82, appended byte for byte as the last option (RFC 3046); dhcproto would re-encode it from
/// its parsed form and, given it raw, emits it twice.
pub fn encode(msg: &Message, relay_agent: Option<&[u8]>) -> Result<Vec<u8>, &'static str> {
    let mut buf = Vec::with_capacity(576);
    msg.encode(&mut Encoder::new(&mut buf))
        .map_err(|_| "encode-error")?;
    if let Some(info) = relay_agent {
        if buf.last() != Some(&255) {
            return Err("encode-error");
        }
        buf.pop();
        for chunk in info.chunks(255) {
            buf.push(OPT_RELAY_AGENT);
            buf.push(chunk.len() as u8);
            buf.extend_from_slice(chunk);
        }
        buf.push(255);
    }
    if buf.len() < MIN_REPLY_LEN {
        buf.resize(MIN_REPLY_LEN, 0);
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_class_accepts_raw_and_rfc3004_forms() {
        assert!(user_class_is_ipxe(b"iPXE"));
        assert!(user_class_is_ipxe(b"\x04iPXE"));
        assert!(user_class_is_ipxe(b"\x03foo\x04iPXE"));
        assert!(!user_class_is_ipxe(b"iPXE2"));
        assert!(!user_class_is_ipxe(b"\x09iPXE"));
        assert!(!user_class_is_ipxe(b""));
        assert!(!user_class_is_ipxe(b"\x00"));
    }

    #[test]
    fn smbios_uuid_swaps_the_first_three_fields() {
        let mut guid = [0u8; 17];
        guid[1..].copy_from_slice(&[
            0x1e, 0xab, 0x57, 0x7e, 0x00, 0x00, 0x00, 0x40, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x01,
        ]);
        assert_eq!(
            smbios_uuid(&guid).as_deref(),
            Some("7e57ab1e-0000-4000-8000-000000000001")
        );
        assert_eq!(smbios_uuid(&[0u8; 17]), None);
    }

    #[test]
    fn arch_is_read_from_vendor_class_when_option_93_is_missing() {
        assert_eq!(
            arch_from_vendor_class(b"PXEClient:Arch:00007:UNDI:003000"),
            Some(7)
        );
        assert_eq!(arch_from_vendor_class(b"PXEClient"), None);
        assert_eq!(arch_from_vendor_class(b"PXEClient:Arch:"), None);
    }

    #[test]
    fn raw_options_concatenate_split_options_and_reject_overruns() {
        let opts = RawOptions::parse(&[60, 2, b'a', b'b', 0, 60, 1, b'c', 255, 9, 9]).unwrap();
        assert_eq!(opts.get(60), Some(&b"abc"[..]));
        assert!(RawOptions::parse(&[60, 5, b'a']).is_none());
        assert!(RawOptions::parse(&[60]).is_none());
    }
}
