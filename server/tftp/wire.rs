//! TFTP packets: read and write requests parsed, DATA, ERROR and OACK built, and the options
//! (blksize, tsize, timeout, windowsize) settled within the limits.

use std::time::Duration;

/// The largest retransmission timeout granted (RFC 2349 `timeout`); a larger one is refused
/// (left out of the OACK) and the default is used.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest block size RFC 2348 allows.
const MAX_BLKSIZE: u16 = 65464;

const OP_RRQ: u16 = 1;
const OP_WRQ: u16 = 2;
pub(super) const OP_DATA: u16 = 3;
const OP_ERROR: u16 = 5;
const OP_OACK: u16 = 6;

pub(super) const ERR_NOT_FOUND: u16 = 1;
pub(super) const ERR_ACCESS: u16 = 2;
pub(super) const ERR_ILLEGAL: u16 = 4;

/// What the server settled for one read request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Negotiated {
    pub(crate) blksize: u16,
    pub(crate) window: u16,
    pub(crate) timeout: Duration,
    /// Options acknowledged in the OACK, in order; empty means no OACK.
    pub(crate) oack: Vec<(&'static str, String)>,
}

/// A read or write request: the file name, and the options asked for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) write: bool,
    pub(crate) path: String,
    pub(crate) mode: String,
    pub(crate) options: Vec<(String, String)>,
}

/// Parses RRQ/WRQ bytes; `None` for anything else or anything malformed.
pub(crate) fn parse_request(packet: &[u8]) -> Option<Request> {
    let opcode = u16::from_be_bytes([*packet.first()?, *packet.get(1)?]);
    let write = match opcode {
        OP_RRQ => false,
        OP_WRQ => true,
        _ => return None,
    };
    let body = packet.get(2..)?;
    // Every field ends with a NUL; anything after the last one is ignored.
    let end = body.iter().rposition(|&b| b == 0)?;
    let mut fields = body[..end]
        .split(|&b| b == 0)
        .map(|f| std::str::from_utf8(f).ok());
    let path = fields.next()??.to_string();
    let mode = fields.next()??.to_ascii_lowercase();
    let mut options = Vec::new();
    while let Some(name) = fields.next() {
        let value = fields.next().flatten();
        if let (Some(name), Some(value)) = (name, value) {
            options.push((name.to_ascii_lowercase(), value.to_string()));
        }
    }
    if path.is_empty() {
        return None;
    }
    Some(Request {
        write,
        path,
        mode,
        options,
    })
}

/// Settles blksize (RFC 2348), tsize and timeout (2349) and windowsize (7440) within the
/// limits; options out of their ranges (a timeout over [`MAX_TIMEOUT`] too: RFC 2349 wants
/// the granted value to be the one asked), and unknown ones, are left out of the OACK.
pub(crate) fn negotiate(
    options: &[(String, String)],
    size: u64,
    block_limit: u16,
    window_limit: u16,
    timeout: Duration,
) -> Negotiated {
    let mut n = Negotiated {
        blksize: 512,
        window: 1,
        timeout,
        oack: Vec::new(),
    };
    for (name, value) in options {
        let Ok(asked) = value.trim().parse::<u64>() else {
            continue;
        };
        match name.as_str() {
            "blksize" if (8..=u64::from(MAX_BLKSIZE)).contains(&asked) => {
                n.blksize = u16::try_from(asked).unwrap_or(512).min(block_limit.max(8));
                n.oack.push(("blksize", n.blksize.to_string()));
            }
            "tsize" if asked == 0 => n.oack.push(("tsize", size.to_string())),
            "timeout" if (1..=MAX_TIMEOUT.as_secs()).contains(&asked) => {
                n.timeout = Duration::from_secs(asked);
                n.oack.push(("timeout", asked.to_string()));
            }
            "windowsize" if (1..=65535).contains(&asked) => {
                n.window = u16::try_from(asked).unwrap_or(1).min(window_limit.max(1));
                n.oack.push(("windowsize", n.window.to_string()));
            }
            _ => {}
        }
    }
    n
}

pub(super) fn error_packet(code: u16, message: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(5 + message.len());
    p.extend_from_slice(&OP_ERROR.to_be_bytes());
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(message.as_bytes());
    p.push(0);
    p
}

pub(crate) fn oack_packet(options: &[(&str, String)]) -> Vec<u8> {
    let mut p = OP_OACK.to_be_bytes().to_vec();
    for (name, value) in options {
        p.extend_from_slice(name.as_bytes());
        p.push(0);
        p.extend_from_slice(value.as_bytes());
        p.push(0);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_malformed_ones_are_dropped() {
        let rrq = parse_request(b"\x00\x01ipxe.efi\x00OCTET\x00BlkSize\x001468\x00tsize\x000\x00")
            .unwrap();
        assert!(!rrq.write);
        assert_eq!(rrq.path, "ipxe.efi");
        assert_eq!(rrq.mode, "octet");
        assert_eq!(
            rrq.options,
            vec![
                ("blksize".to_string(), "1468".to_string()),
                ("tsize".to_string(), "0".to_string())
            ]
        );
        assert!(parse_request(b"\x00\x02x\x00octet\x00").unwrap().write);
        for bad in [
            &b""[..],
            b"\x00",
            b"\x00\x01",
            b"\x00\x01name-without-nul",
            b"\x00\x01\x00octet\x00",
            b"\x00\x01name\x00",
            b"\x00\x03\x00\x01data",
            b"\x00\x01\xff\xfe\x00octet\x00",
        ] {
            assert_eq!(parse_request(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn options_are_granted_within_the_limits() {
        let opts = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        let t = Duration::from_secs(2);
        let n = negotiate(
            &opts(&[("blksize", "9000"), ("windowsize", "64"), ("tsize", "0")]),
            1234,
            1468,
            16,
            t,
        );
        assert_eq!((n.blksize, n.window), (1468, 16));
        assert_eq!(
            n.oack,
            vec![
                ("blksize", "1468".to_string()),
                ("windowsize", "16".to_string()),
                ("tsize", "1234".to_string())
            ]
        );
        let n = negotiate(
            &opts(&[
                ("blksize", "4"),
                ("windowsize", "0"),
                ("timeout", "0"),
                ("x", "1"),
            ]),
            1,
            1468,
            16,
            t,
        );
        assert_eq!((n.blksize, n.window, n.timeout), (512, 1, t));
        assert!(n.oack.is_empty());
    }

    #[test]
    fn a_timeout_over_the_cap_is_refused_and_one_within_it_granted() {
        let opts = |t: &str| vec![("timeout".to_string(), t.to_string())];
        let default = Duration::from_secs(2);
        let n = negotiate(&opts("255"), 1, 1468, 16, default);
        assert_eq!(n.timeout, default);
        assert!(n.oack.is_empty(), "{:?}", n.oack);
        let n = negotiate(&opts("5"), 1, 1468, 16, default);
        assert_eq!(n.timeout, MAX_TIMEOUT);
        assert_eq!(n.oack, vec![("timeout", "5".to_string())]);
    }
}
