//! Fuzz targets: every parser of untrusted or operator input, entered the way the appliance
//! enters it, each a function of arbitrary bytes that must return (an answer or a refusal)
//! and never panic. `bootplane-fuzz` runs them under libFuzzer (`scripts/fuzz`); the
//! integration tests run every committed seed and regression input through them.
//!
//! Where a target can check more than "no panic" cheaply, it does: a DHCP reply encodes to a
//! packet that parses again with the request's transaction ID; a TFTP option the OACK grants
//! is within the limits; a patch that applies leaves a list of mappings.

// A target reports a broken invariant the way libFuzzer sees it: by panicking.
#![allow(clippy::panic)]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::OnceLock;

use crate::config::{BootConfig, ConfigAccess, DhcpConfig, DhcpMode, Pool};
use crate::dhcp::decide::{respond, Ctx, Via};
use crate::dhcp::leases::LeaseTable;
use crate::dhcp::wire;
use crate::inventory::Snapshot;
use crate::model::{EfiBinary, Mac, Machine, Role};

/// A target: its name (also its seed folder under `tests/fuzz/seeds/`) and its entry point.
/// A target returns whether the input got past its parser (a test checks that every target
/// accepts some of its seeds: a target that refused everything would fuzz nothing).
pub type Target = (&'static str, fn(&[u8]) -> bool);

/// Every target, in the order `scripts/fuzz` runs them.
pub const TARGETS: &[Target] = &[
    ("dhcp", dhcp),
    ("tftp", tftp),
    ("boot-query", boot_query),
    ("kernel-log", kernel_log),
    ("event-sink", event_sink),
    ("patch", patch),
    ("secrets", secrets),
    ("config-file", config_file),
];

/// The target named `name`.
pub fn target(name: &str) -> Option<fn(&[u8]) -> bool> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const T0: i64 = 1_700_000_000_000;

/// What the DHCP decisions read: a lab's inventory (three control planes and workers with
/// static addresses, a machine without a role, one with an address outside the subnet), the
/// full and the proxy configuration.
struct DhcpWorld {
    full: DhcpConfig,
    proxy: DhcpConfig,
    boot: BootConfig,
    snapshot: Snapshot,
}

fn dhcp_world() -> &'static DhcpWorld {
    static WORLD: OnceLock<DhcpWorld> = OnceLock::new();
    WORLD.get_or_init(|| {
        let config = |mode| DhcpConfig {
            mode,
            port: 67,
            pxe_port: 4011,
            subnet: crate::model::Ipv4Cidr {
                addr: Ipv4Addr::new(10, 77, 0, 0),
                prefix: 24,
            },
            pool: Some(Pool {
                start: Ipv4Addr::new(10, 77, 0, 100),
                end: Ipv4Addr::new(10, 77, 0, 110),
            }),
            router: Some(Ipv4Addr::new(10, 77, 0, 254)),
            dns: vec![Ipv4Addr::new(10, 77, 0, 53)],
            lease_secs: 3600,
            router_advertisements: false,
            router_advertisements_required: false,
        };
        let mut machines = Vec::new();
        for i in 0u8..8 {
            let mut m = Machine::discovered(Mac([0x52, 0x54, 0, 0x77, 0, i]));
            m.role = if i < 3 {
                Role::Controlplane
            } else {
                Role::Worker
            };
            m.hostname = Some(format!("node-{i}"));
            m.ip = Some(crate::model::Ipv4Cidr {
                addr: Ipv4Addr::new(10, 77, 0, 10 + i),
                prefix: 24,
            });
            m.gateway = Some(Ipv4Addr::new(10, 77, 0, 254));
            m.installed = i % 2 == 0;
            m.diskless = i == 7;
            machines.push(m);
        }
        machines.push(Machine::discovered(Mac([0x52, 0x54, 0, 0x77, 0, 0x20])));
        let mut outside = Machine::discovered(Mac([0x52, 0x54, 0, 0x77, 0, 0x21]));
        outside.role = Role::Worker;
        outside.hostname = Some("elsewhere".into());
        outside.ip = Some(crate::model::Ipv4Cidr {
            addr: Ipv4Addr::new(192, 168, 9, 9),
            prefix: 24,
        });
        machines.push(outside);
        DhcpWorld {
            full: config(DhcpMode::Full),
            proxy: config(DhcpMode::Proxy),
            boot: BootConfig {
                advertise_ip: SERVER,
                http_port: 8080,
                ipxe_dir: PathBuf::from("/nonexistent/ipxe"),
                efi_binary: EfiBinary::IpxeEfi,
                arm64_binary: "ipxe-arm64.efi".into(),
                images_dir: PathBuf::from("/nonexistent/images"),
                talos_version: "v1.13.9".into(),
                extra_kernel_args: vec![],
                retry_secs: 10,
                tftp_block_limit: 1468,
                tftp_window_limit: 16,
                config_access: ConfigAccess::Mac,
                events_port: None,
                kernel_log_port: None,
                boot_log_lines: 5000,
            },
            snapshot: Snapshot::from_machines(machines),
        }
    })
}

/// DHCP decode, decide and encode, in both modes and on both ports. The input is a sequence
/// of datagrams (a two-byte length before each; the first byte picks the mode and port), all
/// answered from one lease table, so offers, requests, declines and releases meet leases
/// earlier datagrams made.
pub fn dhcp(data: &[u8]) -> bool {
    dhcp_replies(data) > 0
}

/// [`dhcp`], counting the replies sent.
pub fn dhcp_replies(data: &[u8]) -> usize {
    let world = dhcp_world();
    let Some((&selector, mut rest)) = data.split_first() else {
        return 0;
    };
    let mut replies = 0;
    let config = if selector & 1 == 0 {
        &world.full
    } else {
        &world.proxy
    };
    let via = if selector & 2 == 0 {
        Via::Dhcp
    } else {
        Via::Pxe
    };
    let mut leases = LeaseTable::default();
    let mut now = T0;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let end = (2 + len).min(rest.len());
        let packet = &rest[2..end];
        rest = &rest[end..];
        now += 1000;
        let Ok(req) = wire::parse(packet) else {
            continue;
        };
        let ctx = Ctx {
            config,
            boot: &world.boot,
            snapshot: &world.snapshot,
            server_ip: SERVER,
            now_ms: now,
            via,
        };
        let src = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);
        let (_, out) = respond(&ctx, &req, src, &mut leases);
        if let Some(out) = out {
            replies += 1;
            use dhcproto::Decodable as _;
            let reply = dhcproto::v4::Message::decode(&mut dhcproto::Decoder::new(&out.bytes));
            match reply {
                Ok(reply) => assert_eq!(reply.xid(), req.xid, "reply to another xid"),
                Err(e) => panic!("a reply that does not parse: {e}"),
            }
        }
    }
    replies
}

/// A TFTP request as the listener reads it, and the options negotiated for it.
pub fn tftp(data: &[u8]) -> bool {
    use crate::tftp::wire::{negotiate, oack_packet, parse_request, MAX_TIMEOUT};
    let Some(request) = parse_request(data) else {
        return false;
    };
    let _ = crate::tftp::resolve_request(std::path::Path::new(&request.path));
    let n = negotiate(
        &request.options,
        851_968,
        1468,
        16,
        std::time::Duration::from_secs(1),
    );
    assert!((8..=1468).contains(&n.blksize), "blksize {}", n.blksize);
    assert!((1..=16).contains(&n.window), "windowsize {}", n.window);
    assert!(n.timeout <= MAX_TIMEOUT, "timeout {:?}", n.timeout);
    let _ = oack_packet(&n.oack);
    true
}

/// The query strings of `/machine.ipxe` and `/config`.
pub fn boot_query(data: &[u8]) -> bool {
    crate::boot::read_query(data)
}

/// One kernel-log line as Talos sends it (`talos.logging.kernel=`).
pub fn kernel_log(data: &[u8]) -> bool {
    let mac = Mac([0x52, 0x54, 0, 0x77, 0, 1]);
    crate::receivers::kmsg::parse_line(mac, T0, data).is_ok()
}

/// One event-sink message (`talos.events.sink=`): the gRPC request body, then its payload.
pub fn event_sink(data: &[u8]) -> bool {
    use prost::Message as _;
    let Ok(event) = crate::talos::api::pb::events::EventRequest::decode(data) else {
        return false;
    };
    match crate::receivers::sink::NodeNews::decode(event.data.as_ref()) {
        Ok(news) => {
            let _ = news.kind();
            let _ = news.summary();
            true
        }
        Err(_) => false,
    }
}

/// The documents a patch meets: a worker's config as bootplane renders it, in short.
fn base_documents() -> &'static Vec<serde_json::Value> {
    static DOCS: OnceLock<Vec<serde_json::Value>> = OnceLock::new();
    DOCS.get_or_init(|| {
        let text = include_str!("../../tests/fuzz/base-config.yaml");
        text.split("\n---\n")
            .filter_map(|doc| serde_yaml_ng::from_str::<serde_json::Value>(doc).ok())
            .collect()
    })
}

/// A config patch (strategic merge or RFC 6902) parsed and applied to a rendered config.
pub fn patch(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(patch) = crate::talos::patch::Patch::parse(text) else {
        return false;
    };
    let mut docs = base_documents().clone();
    let applied = crate::talos::patch::apply(&mut docs, &patch).is_ok();
    if applied {
        assert!(
            docs.iter().all(serde_json::Value::is_object),
            "a patch left a document that is not a mapping"
        );
    } else {
        // `apply`'s contract: on error the documents are left as they were.
        assert_eq!(
            &docs,
            base_documents(),
            "a refused patch changed the documents"
        );
    }
    applied
}

/// A `secrets.yaml` as the import reads it.
pub fn secrets(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    crate::talos::secrets::SecretsBundle::from_yaml(text).is_ok()
}

/// The TOML config file.
pub fn config_file(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    crate::config::file::parse_text(text).is_ok()
}
