//! DHCP behaviour pinned on byte fixtures (decode → decide → encode), the lease rules with an
//! injected clock, and `run` over real UDP sockets on loopback.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::decide::{respond, Ctx, Dest, Outcome, Outgoing, Via};
use super::fixtures::{self, Packet, DECLINE, DISCOVER, INFORM, RELEASE, REQUEST};
use super::leases::LeaseTable;
use super::wire::{self, RawOptions};
use crate::config::{BootConfig, DhcpConfig, DhcpMode, Pool};
use crate::db::Db;
use crate::inventory::Snapshot;
use crate::model::{EfiBinary, EventKind, Mac, Machine};
use crate::support::clock::{Clock, ManualClock};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x77, 0x00, 0x01];
const OTHER_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x77, 0x00, 0x02];
const ADVERTISE: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 254);
const SCRIPT_URL: &str = "http://10.77.0.1:8080/boot.ipxe";
const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);
const T0: i64 = 1_700_000_000_000;

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, last)
}

fn dhcp_config(mode: DhcpMode, pool: Option<&str>) -> DhcpConfig {
    DhcpConfig {
        mode,
        port: 67,
        pxe_port: 4011,
        subnet: "10.77.0.0/24".parse().unwrap(),
        pool: pool.map(|p| p.parse::<Pool>().unwrap()),
        router: Some(ROUTER),
        dns: vec![Ipv4Addr::new(10, 77, 0, 53)],
        lease_secs: 3600,
        router_advertisements: false,
        router_advertisements_required: false,
    }
}

fn boot_config(ipxe_dir: PathBuf) -> BootConfig {
    BootConfig {
        advertise_ip: ADVERTISE,
        http_port: 8080,
        ipxe_dir,
        efi_binary: EfiBinary::IpxeEfi,
        arm64_binary: "ipxe-arm64.efi".into(),
        images_dir: PathBuf::from("./images"),
        talos_version: "v1.11.6".into(),
        extra_kernel_args: vec![],
        retry_secs: 10,
        tftp_block_limit: 1468,
        tftp_window_limit: 16,
        config_access: crate::config::ConfigAccess::Mac,
        events_port: None,
        kernel_log_port: None,
        boot_log_lines: 5000,
    }
}

/// A known controlplane machine with a static address.
fn static_machine(mac: [u8; 6], addr: &str) -> Machine {
    let mut m = Machine::discovered(Mac(mac));
    m.role = crate::model::Role::Controlplane;
    m.hostname = Some("cp-1".into());
    m.ip = Some(addr.parse().unwrap());
    m.gateway = Some(ip(1));
    m.dns = vec![Ipv4Addr::new(1, 1, 1, 1)];
    m
}

/// Everything a decision reads, owned, so a test can run several packets against it.
struct World {
    config: DhcpConfig,
    boot: BootConfig,
    snapshot: Snapshot,
    leases: LeaseTable,
    clock: Arc<ManualClock>,
    _ipxe_dir: tempfile::TempDir,
}

impl World {
    fn new(mode: DhcpMode, pool: Option<&str>, machines: Vec<Machine>) -> World {
        let dir = tempfile::tempdir().unwrap();
        World {
            config: dhcp_config(mode, pool),
            boot: boot_config(dir.path().to_path_buf()),
            snapshot: Snapshot::from_machines(machines),
            leases: LeaseTable::default(),
            clock: ManualClock::new(T0),
            _ipxe_dir: dir,
        }
    }

    fn with_arm64_binary(self) -> World {
        std::fs::write(self.boot.ipxe_dir.join("ipxe-arm64.efi"), b"efi").unwrap();
        self
    }

    /// decode → decide → encode for one datagram.
    fn handle(&mut self, via: Via, packet: &[u8], src: SocketAddrV4) -> Handled {
        let req = match wire::parse(packet) {
            Ok(req) => req,
            Err(reason) => {
                return Handled {
                    outcome: Outcome {
                        drop: Some(reason),
                        ..Outcome::default()
                    },
                    out: None,
                }
            }
        };
        let ctx = Ctx {
            config: &self.config,
            boot: &self.boot,
            snapshot: &self.snapshot,
            server_ip: ADVERTISE,
            now_ms: self.clock.now_ms(),
            via,
        };
        let (outcome, out) = respond(&ctx, &req, src, &mut self.leases);
        Handled { outcome, out }
    }

    fn send(&mut self, packet: Packet) -> Handled {
        self.handle(Via::Dhcp, &packet.bytes(), CLIENT)
    }
}

struct Handled {
    outcome: Outcome,
    out: Option<Outgoing>,
}

impl Handled {
    fn reply(&self) -> Reply {
        let out = self
            .out
            .as_ref()
            .unwrap_or_else(|| panic!("expected a reply, got {:?}", self.outcome));
        Reply::parse(&out.bytes, out.dest)
    }

    fn dropped(&self) -> Option<&'static str> {
        assert!(self.out.is_none(), "expected no reply");
        self.outcome.drop
    }
}

/// A reply read back from its wire bytes.
struct Reply {
    bytes: Vec<u8>,
    opts: RawOptions,
    dest: Dest,
}

impl Reply {
    fn parse(bytes: &[u8], dest: Dest) -> Reply {
        assert!(
            bytes.len() >= 300,
            "replies are padded to the BOOTP minimum"
        );
        assert_eq!(bytes[..4], [2, 1, 6, 0], "op/htype/hlen/hops");
        assert_eq!(bytes[236..240], [99, 130, 83, 99], "magic cookie");
        Reply {
            bytes: bytes.to_vec(),
            opts: RawOptions::parse(&bytes[240..]).unwrap(),
            dest,
        }
    }
    fn addr(&self, at: usize) -> Ipv4Addr {
        Ipv4Addr::new(
            self.bytes[at],
            self.bytes[at + 1],
            self.bytes[at + 2],
            self.bytes[at + 3],
        )
    }
    fn xid(&self) -> u32 {
        u32::from_be_bytes([self.bytes[4], self.bytes[5], self.bytes[6], self.bytes[7]])
    }
    fn yiaddr(&self) -> Ipv4Addr {
        self.addr(16)
    }
    fn siaddr(&self) -> Ipv4Addr {
        self.addr(20)
    }
    fn giaddr(&self) -> Ipv4Addr {
        self.addr(24)
    }
    fn chaddr(&self) -> [u8; 6] {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&self.bytes[28..34]);
        mac
    }
    fn text(&self, from: usize, len: usize) -> String {
        let field = &self.bytes[from..from + len];
        let end = field.iter().position(|b| *b == 0).unwrap_or(len);
        String::from_utf8(field[..end].to_vec()).unwrap()
    }
    fn sname(&self) -> String {
        self.text(44, 64)
    }
    fn file(&self) -> String {
        self.text(108, 128)
    }
    fn opt(&self, code: u8) -> Option<&[u8]> {
        self.opts.get(code)
    }
    fn msg_type(&self) -> u8 {
        self.opt(53).unwrap()[0]
    }
}

/// One row of the decision table: a packet and what must come back.
struct Case {
    mode: DhcpMode,
    via: Via,
    packet: Packet,
    src: SocketAddrV4,
    machines: Vec<Machine>,
    pool: Option<&'static str>,
    arm64_binary: bool,
    expect: Expect,
}

impl Case {
    fn proxy(packet: Packet) -> Case {
        Case {
            mode: DhcpMode::Proxy,
            via: Via::Dhcp,
            packet,
            src: CLIENT,
            machines: vec![],
            pool: None,
            arm64_binary: false,
            expect: Expect::default(),
        }
    }

    fn full(packet: Packet) -> Case {
        Case {
            mode: DhcpMode::Full,
            ..Case::proxy(packet)
        }
    }
}

/// Expected reply fields; `None` means "not checked". Options listed in `absent` must not be
/// in the reply.
#[derive(Default)]
struct Expect {
    drop: Option<&'static str>,
    msg_type: Option<u8>,
    yiaddr: Option<Ipv4Addr>,
    siaddr: Option<Ipv4Addr>,
    sname: Option<&'static str>,
    file: Option<&'static str>,
    opts: Vec<(u8, Vec<u8>)>,
    absent: Vec<u8>,
    dest: Option<Dest>,
    event: Option<EventKind>,
}

/// The table-driven helper: every decision-table test goes through here.
fn check(case: Case) -> (Reply, Outcome) {
    let mut world = World::new(case.mode, case.pool, case.machines);
    if case.arm64_binary {
        world = world.with_arm64_binary();
    }
    let request = case.packet.bytes();
    let handled = world.handle(case.via, &request, case.src);
    let e = case.expect;
    if let Some(reason) = e.drop {
        assert_eq!(handled.dropped(), Some(reason), "drop reason");
        if let Some(kind) = e.event {
            assert_eq!(handled.outcome.event.as_ref().map(|(k, _)| *k), Some(kind));
        }
        let empty = Reply {
            bytes: vec![],
            opts: RawOptions::default(),
            dest: Dest::Broadcast(0),
        };
        return (empty, handled.outcome);
    }
    let reply = handled.reply();
    assert_eq!(reply.xid(), case.packet.xid, "xid copied");
    assert_eq!(reply.chaddr(), case.packet.mac, "chaddr copied");
    assert_eq!(reply.giaddr(), case.packet.giaddr, "giaddr kept");
    assert_eq!(reply.opt(54), Some(&ADVERTISE.octets()[..]), "option 54");
    if let Some(t) = e.msg_type {
        assert_eq!(reply.msg_type(), t, "option 53");
    }
    if let Some(y) = e.yiaddr {
        assert_eq!(reply.yiaddr(), y, "yiaddr");
    }
    if let Some(s) = e.siaddr {
        assert_eq!(reply.siaddr(), s, "siaddr");
    }
    if let Some(s) = e.sname {
        assert_eq!(reply.sname(), s, "sname");
    }
    if let Some(f) = e.file {
        assert_eq!(reply.file(), f, "file");
        if !f.is_empty() {
            assert_eq!(reply.opt(67), Some(f.as_bytes()), "option 67");
        }
    }
    for (code, value) in &e.opts {
        assert_eq!(reply.opt(*code), Some(&value[..]), "option {code}");
    }
    for code in &e.absent {
        assert_eq!(reply.opt(*code), None, "option {code} must be absent");
    }
    if let Some(d) = e.dest {
        assert_eq!(reply.dest, d, "destination");
    }
    if let Some(kind) = e.event {
        assert_eq!(
            handled.outcome.event.as_ref().map(|(k, _)| *k),
            Some(kind),
            "event"
        );
    }
    (reply, handled.outcome)
}

const OFFER: u8 = 2;
const ACK: u8 = 5;
const NAK: u8 = 6;
const PXE_43: [u8; 4] = [6, 1, 8, 255];

fn proxy_expect(file: &'static str, msg_type: u8) -> Expect {
    Expect {
        msg_type: Some(msg_type),
        yiaddr: Some(Ipv4Addr::UNSPECIFIED),
        siaddr: Some(ADVERTISE),
        sname: Some("10.77.0.1"),
        file: Some(file),
        opts: vec![(60, b"PXEClient".to_vec()), (43, PXE_43.to_vec())],
        absent: vec![1, 3, 6, 51, 175],
        dest: Some(Dest::Broadcast(68)),
        event: Some(if msg_type == OFFER {
            EventKind::ProxyOffer
        } else {
            EventKind::ProxyAck
        }),
        ..Expect::default()
    }
}

fn bios_pxe_rom(kind: u8) -> Packet {
    Packet::new(kind, MAC)
        .opt(93, [0, 0])
        .opt(94, [1, 2, 1])
        .opt(60, "PXEClient:Arch:00000:UNDI:002001")
}

// ---- proxy mode -------------------------------------------------------------------------

#[test]
fn bios_pxe_rom_gets_proxy_offer_for_undionly() {
    check(Case {
        expect: proxy_expect("undionly.kpxe", OFFER),
        ..Case::proxy(bios_pxe_rom(DISCOVER))
    });
}

#[test]
fn unknown_mac_gets_proxy_offer_so_it_can_be_discovered() {
    let (_, outcome) = check(Case {
        expect: proxy_expect("undionly.kpxe", OFFER),
        ..Case::proxy(bios_pxe_rom(DISCOVER))
    });
    let (_, detail) = outcome.event.unwrap();
    assert_eq!(detail, "file=undionly.kpxe arch=0");
}

#[test]
fn qemu_ipxe_rom_under_seabios_gets_script_url() {
    let mut expect = proxy_expect(SCRIPT_URL, OFFER);
    // iPXE's client id is echoed (RFC 6842).
    expect
        .opts
        .push((61, vec![1, 0x52, 0x54, 0x00, 0x77, 0x00, 0x01]));
    check(Case {
        expect,
        ..Case::proxy(fixtures::ipxe_bios(DISCOVER, MAC))
    });
}

#[test]
fn ovmf_pxe_gets_ipxe_efi_with_guid_echoed() {
    let mut expect = proxy_expect("ipxe.efi", OFFER);
    expect.opts.push((97, fixtures::OVMF_GUID.to_vec()));
    expect.opts.push((66, b"10.77.0.1".to_vec()));
    check(Case {
        expect,
        ..Case::proxy(fixtures::ovmf_pxe(DISCOVER, MAC))
    });
    let req = wire::parse(&fixtures::ovmf_pxe(DISCOVER, MAC).bytes()).unwrap();
    assert_eq!(req.arch, Some(7));
    assert_eq!(
        req.smbios_uuid().as_deref(),
        Some("7e57ab1e-0000-4000-8000-000000000001")
    );
}

#[test]
fn ovmf_request_on_port_4011_gets_proxy_ack_back_to_its_source() {
    let client = SocketAddrV4::new(ip(50), 4011);
    let mut expect = proxy_expect("ipxe.efi", ACK);
    expect.dest = Some(Dest::Unicast(client));
    let (reply, outcome) = check(Case {
        via: Via::Pxe,
        src: client,
        expect,
        ..Case::proxy(fixtures::ovmf_pxe(REQUEST, MAC).ciaddr(ip(50)))
    });
    assert_eq!(reply.addr(12), ip(50), "ciaddr copied into the ACK");
    assert_eq!(
        outcome.leased, None,
        "a ciaddr the client wrote is no evidence of the address it holds"
    );
}

#[test]
fn proxy_request_on_port_67_gets_ack_but_its_requested_address_is_no_evidence() {
    let (_, outcome) = check(Case {
        expect: proxy_expect("ipxe.efi", ACK),
        ..Case::proxy(
            fixtures::ovmf_pxe(REQUEST, MAC)
                .requested(ip(60))
                .server(ip(254)),
        )
    });
    assert_eq!(
        outcome.leased, None,
        "another server's lease, as the client tells it"
    );
    let (_, detail) = outcome.event.as_ref().unwrap();
    assert!(
        detail.contains("ip=10.77.0.60"),
        "the claim is logged as said: {detail}"
    );
}

#[test]
fn machine_override_gets_snponly_efi() {
    let mut m = Machine::discovered(Mac(MAC));
    m.efi_binary = Some(EfiBinary::SnponlyEfi);
    check(Case {
        machines: vec![m],
        expect: proxy_expect("snponly.efi", OFFER),
        ..Case::proxy(fixtures::ovmf_pxe(DISCOVER, MAC))
    });
}

#[test]
fn arch_9_is_x64_uefi_despite_dhcprotos_name() {
    check(Case {
        expect: proxy_expect("ipxe.efi", OFFER),
        ..Case::proxy(
            Packet::new(DISCOVER, MAC)
                .opt(93, [0, 9])
                .opt(60, "PXEClient:Arch:00009:UNDI:003000"),
        )
    });
}

#[test]
fn missing_option_93_falls_back_to_the_vendor_class_arch() {
    check(Case {
        expect: proxy_expect("ipxe.efi", OFFER),
        ..Case::proxy(Packet::new(DISCOVER, MAC).opt(60, "PXEClient:Arch:00007:UNDI:003000"))
    });
}

#[test]
fn ipxe_efi_gets_script_url() {
    check(Case {
        expect: proxy_expect(SCRIPT_URL, OFFER),
        ..Case::proxy(fixtures::ipxe_efi(DISCOVER, MAC))
    });
}

#[test]
fn ipxe_with_length_byte_gets_script_url() {
    check(Case {
        expect: proxy_expect(SCRIPT_URL, OFFER),
        ..Case::proxy(bios_pxe_rom(DISCOVER).opt(77, b"\x04iPXE"))
    });
}

#[test]
fn ipxe_option_175_alone_gets_script_url() {
    check(Case {
        expect: proxy_expect(SCRIPT_URL, OFFER),
        ..Case::proxy(bios_pxe_rom(DISCOVER).opt(175, fixtures::IPXE_175))
    });
}

#[test]
fn uefi_http_boot_gets_full_url_and_httpclient() {
    check(Case {
        expect: Expect {
            msg_type: Some(OFFER),
            yiaddr: Some(Ipv4Addr::UNSPECIFIED),
            file: Some("http://10.77.0.1:8080/ipxe/ipxe.efi"),
            opts: vec![
                (60, b"HTTPClient".to_vec()),
                (97, fixtures::OVMF_GUID.to_vec()),
            ],
            absent: vec![43],
            ..Expect::default()
        },
        ..Case::proxy(fixtures::ovmf_http(DISCOVER, MAC))
    });
}

#[test]
fn arm64_gets_arm64_binary_when_present() {
    check(Case {
        arm64_binary: true,
        expect: proxy_expect("ipxe-arm64.efi", OFFER),
        ..Case::proxy(fixtures::arm64_pxe(DISCOVER, MAC))
    });
}

#[test]
fn arm64_without_binary_gets_no_reply() {
    let (_, outcome) = check(Case {
        expect: Expect {
            drop: Some("arm64-missing"),
            ..Expect::default()
        },
        ..Case::proxy(fixtures::arm64_pxe(DISCOVER, MAC))
    });
    assert!(outcome.warn.unwrap().contains("ipxe-arm64.efi"));
    // Recorded all the same, with why: the operator sees the machine that cannot boot.
    let (kind, detail) = outcome.event.expect("a not-served event");
    assert_eq!(kind, EventKind::NotServed);
    assert!(detail.contains("ipxe-arm64.efi"), "{detail}");
}

#[test]
fn arm64_http_boot_gets_arm64_url() {
    check(Case {
        arm64_binary: true,
        expect: Expect {
            file: Some("http://10.77.0.1:8080/ipxe/ipxe-arm64.efi"),
            opts: vec![(60, b"HTTPClient".to_vec())],
            ..Expect::default()
        },
        ..Case::proxy(
            Packet::new(DISCOVER, MAC)
                .opt(93, [0, 19])
                .opt(60, "HTTPClient:Arch:00019:UNDI:003000"),
        )
    });
}

#[test]
fn unknown_arch_gets_no_proxy_reply() {
    check(Case {
        expect: Expect {
            drop: Some("unknown-arch"),
            ..Expect::default()
        },
        // 6 is IA32 UEFI: x64 iPXE cannot run there.
        ..Case::proxy(
            Packet::new(DISCOVER, MAC)
                .opt(93, [0, 6])
                .opt(60, "PXEClient:Arch:00006:UNDI:003000"),
        )
    });
}

#[test]
fn relayed_discover_is_answered_to_the_relay_with_option_82_echoed() {
    let relay = Ipv4Addr::new(10, 78, 0, 1);
    let agent_info = vec![1, 4, 0, 0, 0, 7, 2, 3, 0xaa, 0xbb, 0xcc];
    let mut expect = proxy_expect("ipxe.efi", OFFER);
    expect.dest = Some(Dest::Unicast(SocketAddrV4::new(relay, 67)));
    expect.opts.push((82, agent_info.clone()));
    let (reply, _) = check(Case {
        src: SocketAddrV4::new(relay, 67),
        expect,
        ..Case::proxy(
            fixtures::ovmf_pxe(DISCOVER, MAC)
                .giaddr(relay)
                .opt(82, agent_info),
        )
    });
    // Option 82 comes last, just before END.
    let opts = &reply.bytes[240..];
    let end = opts.iter().rposition(|b| *b == 255).unwrap();
    assert_eq!(opts[end - 13], 82);
}

#[test]
fn non_pxe_client_gets_no_proxy_reply() {
    check(Case {
        expect: Expect {
            drop: Some("not-pxe"),
            ..Expect::default()
        },
        ..Case::proxy(fixtures::udhcpc(DISCOVER, MAC))
    });
}

#[test]
fn invalid_guid_gets_no_proxy_reply() {
    check(Case {
        expect: Expect {
            drop: Some("bad-guid"),
            ..Expect::default()
        },
        ..Case::proxy(bios_pxe_rom(DISCOVER).opt(97, [1, 2, 3]))
    });
}

#[test]
fn proxy_ignores_release_decline_and_inform_on_port_67() {
    for kind in [RELEASE, DECLINE, INFORM] {
        check(Case {
            expect: Expect {
                drop: Some("ignored-type"),
                ..Expect::default()
            },
            ..Case::proxy(bios_pxe_rom(kind).ciaddr(ip(9)))
        });
    }
}

#[test]
fn test_client_on_an_ephemeral_port_gets_a_unicast_reply() {
    let src = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 40_000);
    let mut expect = proxy_expect("undionly.kpxe", OFFER);
    expect.dest = Some(Dest::Unicast(src));
    check(Case {
        src,
        expect,
        ..Case::proxy(bios_pxe_rom(DISCOVER))
    });
}

#[test]
fn proxy_unicasts_to_ciaddr_when_the_client_has_an_address() {
    let mut expect = proxy_expect("undionly.kpxe", ACK);
    expect.dest = Some(Dest::Unicast(SocketAddrV4::new(ip(70), 68)));
    check(Case {
        src: SocketAddrV4::new(ip(70), 68),
        expect,
        ..Case::proxy(bios_pxe_rom(REQUEST).ciaddr(ip(70)))
    });
}

#[test]
fn malformed_and_truncated_packets_are_dropped() {
    let good = bios_pxe_rom(DISCOVER).bytes();
    let mut bad_magic = good.clone();
    bad_magic[236] = 0;
    let mut overrun = good.clone();
    overrun.truncate(overrun.len() - 3);
    let last = overrun.len() - 1;
    overrun[last] = 200; // an option length past the end
    let mut huge_hlen = good.clone();
    huge_hlen[2] = 200; // dhcproto's chaddr() would panic on this
    let mut reply_op = good.clone();
    reply_op[0] = 2;
    let mut bad_type_len = Packet::new(DISCOVER, MAC).bytes();
    bad_type_len[241] = 2; // option 53 claims 2 bytes
    let rows: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "malformed"),
        ("header only", good[..100].to_vec(), "malformed"),
        ("no magic", good[..236].to_vec(), "malformed"),
        ("bad magic", bad_magic, "malformed"),
        ("option overrun", overrun, "malformed"),
        (
            "garbage",
            (0..600u32).map(|i| (i * 37 % 251) as u8).collect(),
            "malformed",
        ),
        ("hlen 200", huge_hlen, "hardware-type"),
        ("bootreply", reply_op, "not-request"),
        ("bad type length", bad_type_len, "malformed"),
        (
            "bootp without type",
            Packet {
                options: vec![],
                ..Packet::new(DISCOVER, MAC)
            }
            .bytes(),
            "bootp",
        ),
        ("zero mac", Packet::new(DISCOVER, [0; 6]).bytes(), "bad-mac"),
    ];
    for (name, bytes, reason) in rows {
        for mode in [DhcpMode::Proxy, DhcpMode::Full] {
            let mut world = World::new(mode, Some("10.77.0.100-10.77.0.110"), vec![]);
            let handled = world.handle(Via::Dhcp, &bytes, CLIENT);
            assert_eq!(handled.dropped(), Some(reason), "{name} in {mode}");
        }
    }
}

#[test]
fn fuzzed_packets_never_panic() {
    let seeds = [
        fixtures::ipxe_bios(DISCOVER, MAC).bytes(),
        fixtures::ovmf_pxe(REQUEST, MAC).bytes(),
        fixtures::udhcpc(REQUEST, MAC).requested(ip(5)).bytes(),
    ];
    let mut state = 0x2545_f491_u32;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    let mut world = World::new(DhcpMode::Full, Some("10.77.0.100-10.77.0.110"), vec![]);
    for round in 0..20_000 {
        let mut bytes = seeds[round % seeds.len()].clone();
        for _ in 0..(next() % 8 + 1) {
            let at = next() as usize % bytes.len();
            bytes[at] = next() as u8;
        }
        bytes.truncate(next() as usize % (bytes.len() + 1) + 200);
        for via in [Via::Dhcp, Via::Pxe] {
            let _ = world.handle(via, &bytes, CLIENT);
        }
    }
}

// ---- full mode: decision table ----------------------------------------------------------

#[test]
fn known_machine_without_option_60_gets_its_static_ip() {
    let (reply, _) = check(Case {
        machines: vec![static_machine(MAC, "10.77.0.11/24")],
        expect: Expect {
            msg_type: Some(OFFER),
            yiaddr: Some(ip(11)),
            file: Some(""),
            opts: vec![
                (1, vec![255, 255, 255, 0]),
                (3, ip(1).octets().to_vec()),
                (6, vec![1, 1, 1, 1]),
                (12, b"cp-1".to_vec()),
                (51, 3600u32.to_be_bytes().to_vec()),
            ],
            absent: vec![43, 60, 67, 175],
            dest: Some(Dest::Broadcast(68)),
            event: Some(EventKind::DhcpOffer),
            ..Expect::default()
        },
        ..Case::full(fixtures::udhcpc(DISCOVER, MAC))
    });
    assert_eq!(reply.siaddr(), Ipv4Addr::UNSPECIFIED);
}

#[test]
fn unknown_mac_gets_no_address_without_pool() {
    let (_, outcome) = check(Case {
        expect: Expect {
            drop: Some("no-address"),
            event: Some(EventKind::Discovered),
            ..Expect::default()
        },
        ..Case::full(fixtures::ovmf_pxe(DISCOVER, MAC))
    });
    assert!(outcome.event.unwrap().1.contains("arch=7"));
}

#[test]
fn unknown_mac_gets_a_pool_address_with_subnet_settings() {
    let (_, outcome) = check(Case {
        pool: Some("10.77.0.100-10.77.0.110"),
        expect: Expect {
            msg_type: Some(OFFER),
            yiaddr: Some(ip(100)),
            opts: vec![
                (1, vec![255, 255, 255, 0]),
                (3, ROUTER.octets().to_vec()),
                (6, vec![10, 77, 0, 53]),
                (51, 3600u32.to_be_bytes().to_vec()),
            ],
            absent: vec![12],
            ..Expect::default()
        },
        ..Case::full(fixtures::udhcpc(DISCOVER, MAC))
    });
    // Not a netboot client: served, but no event, so no machine row.
    assert_eq!(outcome.event, None);
}

#[test]
fn unknown_plain_client_leaves_no_event_but_a_known_one_does() {
    let (_, outcome) = check(Case {
        pool: Some("10.77.0.100-10.77.0.110"),
        expect: Expect {
            msg_type: Some(ACK),
            ..Expect::default()
        },
        ..Case::full(fixtures::udhcpc(REQUEST, MAC).opt(50, ip(100).octets()))
    });
    assert_eq!(outcome.event, None);
    check(Case {
        machines: vec![static_machine(MAC, "10.77.0.11/24")],
        expect: Expect {
            msg_type: Some(OFFER),
            event: Some(EventKind::DhcpOffer),
            ..Expect::default()
        },
        ..Case::full(fixtures::udhcpc(DISCOVER, MAC))
    });
}

#[test]
fn full_mode_ovmf_gets_address_and_tftp_file_without_pxeclient() {
    // No option 60 PXEClient: EDK2 then takes the offer as "DHCP only with boot file" and
    // boots it directly instead of asking port 4011.
    check(Case {
        machines: vec![static_machine(MAC, "10.77.0.11/24")],
        expect: Expect {
            msg_type: Some(OFFER),
            yiaddr: Some(ip(11)),
            siaddr: Some(ADVERTISE),
            sname: Some("10.77.0.1"),
            file: Some("ipxe.efi"),
            opts: vec![(97, fixtures::OVMF_GUID.to_vec())],
            absent: vec![43, 60, 175],
            ..Expect::default()
        },
        ..Case::full(fixtures::ovmf_pxe(DISCOVER, MAC))
    });
}

#[test]
fn full_mode_ipxe_gets_script_url_and_no_pxedhcp() {
    check(Case {
        machines: vec![static_machine(MAC, "10.77.0.11/24")],
        expect: Expect {
            yiaddr: Some(ip(11)),
            file: Some(SCRIPT_URL),
            opts: vec![(175, vec![176, 1, 1])],
            absent: vec![43, 60],
            ..Expect::default()
        },
        ..Case::full(fixtures::ipxe_bios(DISCOVER, MAC))
    });
}

#[test]
fn full_mode_http_boot_gets_url_and_httpclient() {
    check(Case {
        pool: Some("10.77.0.100-10.77.0.110"),
        expect: Expect {
            yiaddr: Some(ip(100)),
            file: Some("http://10.77.0.1:8080/ipxe/ipxe.efi"),
            opts: vec![(60, b"HTTPClient".to_vec())],
            ..Expect::default()
        },
        ..Case::full(fixtures::ovmf_http(DISCOVER, MAC))
    });
}

#[test]
fn full_mode_unknown_arch_still_gets_an_address_without_boot_file() {
    let (_, outcome) = check(Case {
        machines: vec![static_machine(MAC, "10.77.0.11/24")],
        expect: Expect {
            yiaddr: Some(ip(11)),
            file: Some(""),
            absent: vec![67],
            ..Expect::default()
        },
        ..Case::full(
            Packet::new(DISCOVER, MAC)
                .opt(93, [0, 6])
                .opt(60, "PXEClient:Arch:00006:UNDI:003000"),
        )
    });
    let why = outcome.warn.expect("a warning");
    // The event says it too, for the operator's timeline.
    let (_, detail) = outcome.event.expect("an event");
    assert!(detail.ends_with(&format!(" not served: {why}")), "{detail}");
}

#[test]
fn full_mode_relayed_discover_goes_to_the_relay() {
    let relay = Ipv4Addr::new(10, 77, 0, 2);
    check(Case {
        src: SocketAddrV4::new(relay, 67),
        pool: Some("10.77.0.100-10.77.0.110"),
        expect: Expect {
            yiaddr: Some(ip(100)),
            dest: Some(Dest::Unicast(SocketAddrV4::new(relay, 67))),
            ..Expect::default()
        },
        ..Case::full(fixtures::udhcpc(DISCOVER, MAC).giaddr(relay))
    });
}

#[test]
fn relay_from_a_foreign_subnet_gets_no_pool_address() {
    let relay = Ipv4Addr::new(10, 99, 0, 1);
    check(Case {
        src: SocketAddrV4::new(relay, 67),
        pool: Some("10.77.0.100-10.77.0.110"),
        expect: Expect {
            drop: Some("no-address"),
            ..Expect::default()
        },
        ..Case::full(fixtures::udhcpc(DISCOVER, MAC).giaddr(relay))
    });
}

#[test]
fn nak_for_a_wrong_requested_address() {
    let (reply, outcome) = check(Case {
        machines: vec![static_machine(MAC, "10.77.0.11/24")],
        expect: Expect {
            msg_type: Some(NAK),
            yiaddr: Some(Ipv4Addr::UNSPECIFIED),
            file: Some(""),
            absent: vec![1, 3, 51],
            dest: Some(Dest::Broadcast(68)),
            event: Some(EventKind::DhcpNak),
            ..Expect::default()
        },
        ..Case::full(
            fixtures::udhcpc(REQUEST, MAC)
                .requested(ip(99))
                .server(ADVERTISE),
        )
    });
    assert!(reply.opt(56).is_some());
    assert_eq!(outcome.leased, None);
}

#[test]
fn request_selecting_another_server_is_ignored() {
    check(Case {
        machines: vec![static_machine(MAC, "10.77.0.11/24")],
        expect: Expect {
            drop: Some("other-server"),
            ..Expect::default()
        },
        ..Case::full(
            fixtures::udhcpc(REQUEST, MAC)
                .requested(ip(11))
                .server(ip(254)),
        )
    });
}

#[test]
fn full_mode_answers_port_4011_like_a_proxy() {
    let client = SocketAddrV4::new(ip(11), 4011);
    let mut expect = proxy_expect("ipxe.efi", ACK);
    expect.dest = Some(Dest::Unicast(client));
    check(Case {
        via: Via::Pxe,
        src: client,
        expect,
        ..Case::full(fixtures::ovmf_pxe(REQUEST, MAC).ciaddr(ip(11)))
    });
}

// ---- full mode: leases with an injected clock ---------------------------------------------

fn lease_world(pool: Option<&str>, machines: Vec<Machine>) -> World {
    World::new(DhcpMode::Full, pool, machines)
}

/// DISCOVER then REQUEST (SELECTING) for `mac`; returns the ACKed address.
fn obtain(world: &mut World, mac: [u8; 6]) -> Ipv4Addr {
    let offer = world.send(fixtures::udhcpc(DISCOVER, mac)).reply();
    assert_eq!(offer.msg_type(), OFFER);
    let ack = world
        .send(
            fixtures::udhcpc(REQUEST, mac)
                .requested(offer.yiaddr())
                .server(ADVERTISE),
        )
        .reply();
    assert_eq!(ack.msg_type(), ACK);
    assert_eq!(ack.yiaddr(), offer.yiaddr());
    ack.yiaddr()
}

#[test]
fn static_machine_gets_its_ip_through_discover_and_request() {
    let mut world = lease_world(None, vec![static_machine(MAC, "10.77.0.11/24")]);
    assert_eq!(obtain(&mut world, MAC), ip(11));
    let lease = world.leases.get(&Mac(MAC)).unwrap();
    assert!(lease.bound);
    assert_eq!(lease.expires_at, T0 + 3_600_000);
    assert_eq!(lease.hostname.as_deref(), Some("cp-1"));
}

#[test]
fn pool_allocation_skips_inventory_router_and_own_addresses() {
    // .1 is bootplane, .10 belongs to a machine in the inventory; the router is .254.
    let mut world = World::new(
        DhcpMode::Full,
        Some("10.77.0.10-10.77.0.12"),
        vec![static_machine(OTHER_MAC, "10.77.0.10/24")],
    );
    world.config.router = Some(ip(11));
    assert_eq!(obtain(&mut world, MAC), ip(12));
    // The pool is now full for a third client.
    let third = [0x52, 0x54, 0, 0x77, 0, 3];
    let handled = world.send(fixtures::udhcpc(DISCOVER, third));
    assert_eq!(handled.dropped(), Some("pool-exhausted"));
}

#[test]
fn offered_address_is_held_for_the_client_it_was_offered_to() {
    let mut world = lease_world(Some("10.77.0.100-10.77.0.100"), vec![]);
    let offer = world.send(fixtures::udhcpc(DISCOVER, MAC)).reply();
    assert_eq!(offer.yiaddr(), ip(100));
    let other = world.send(fixtures::udhcpc(DISCOVER, OTHER_MAC));
    assert_eq!(other.dropped(), Some("pool-exhausted"));
    // After the hold runs out, the address is free again.
    world.clock.advance(61_000);
    assert_eq!(
        world
            .send(fixtures::udhcpc(DISCOVER, OTHER_MAC))
            .reply()
            .yiaddr(),
        ip(100)
    );
}

/// A RENEWING client's REQUEST, unicast from its leased address.
fn renewal(world: &mut World, addr: Ipv4Addr) -> Handled {
    world.handle(
        Via::Dhcp,
        &fixtures::udhcpc(REQUEST, MAC).ciaddr(addr).bytes(),
        SocketAddrV4::new(addr, 68),
    )
}

#[test]
fn renewal_extends_the_lease_and_is_unicast_to_the_client() {
    let mut world = lease_world(Some("10.77.0.100-10.77.0.110"), vec![]);
    let addr = obtain(&mut world, MAC);
    world.clock.advance(1_800_000);
    let renew = renewal(&mut world, addr);
    let ack = renew.reply();
    assert_eq!(ack.msg_type(), ACK);
    assert_eq!(ack.yiaddr(), addr);
    assert_eq!(ack.dest, Dest::Unicast(SocketAddrV4::new(addr, 68)));
    assert_eq!(
        renew.outcome.leased,
        Some((addr, T0 + 1_800_000 + 3_600_000)),
        "a renewed lease of ours is evidence until it ends"
    );
    assert_eq!(
        world.leases.get(&Mac(MAC)).unwrap().expires_at,
        T0 + 1_800_000 + 3_600_000
    );
}

#[test]
fn a_renewal_soon_after_the_grant_keeps_the_lease_unwritten_with_the_time_left() {
    let mut world = lease_world(Some("10.77.0.100-10.77.0.110"), vec![]);
    let addr = obtain(&mut world, MAC);
    assert_eq!(
        world.leases.take_dirty().len(),
        1,
        "the new lease is written"
    );
    // 10 minutes into an hour: under a quarter of the lifetime.
    world.clock.advance(600_000);
    let renew = renewal(&mut world, addr);
    let ack = renew.reply();
    assert_eq!(ack.msg_type(), ACK);
    assert_eq!(ack.yiaddr(), addr);
    assert_eq!(
        ack.opt(51),
        Some(&3_000u32.to_be_bytes()[..]),
        "the client is told the 50 minutes it has left"
    );
    assert_eq!(
        ack.opt(58),
        Some(&1_500u32.to_be_bytes()[..]),
        "T1 half of it"
    );
    assert_eq!(renew.outcome.leased, Some((addr, T0 + 3_600_000)));
    assert!(world.leases.take_dirty().is_empty(), "nothing to write");
    // Past a quarter of the lifetime, the renewal extends the lease again and writes it.
    world.clock.advance(300_001);
    let renew = renewal(&mut world, addr);
    assert_eq!(renew.reply().opt(51), Some(&3_600u32.to_be_bytes()[..]));
    assert_eq!(world.leases.take_dirty().len(), 1);
}

#[test]
fn expired_lease_is_reclaimed_by_another_client() {
    let mut world = lease_world(Some("10.77.0.100-10.77.0.100"), vec![]);
    let addr = obtain(&mut world, MAC);
    assert_eq!(
        world.send(fixtures::udhcpc(DISCOVER, OTHER_MAC)).dropped(),
        Some("pool-exhausted")
    );
    world.clock.advance(3_600_001);
    assert_eq!(obtain(&mut world, OTHER_MAC), addr);
    // The first client's renewal is now refused.
    let renew = renewal(&mut world, addr);
    assert_eq!(renew.reply().msg_type(), NAK);
}

#[test]
fn release_frees_the_address() {
    let mut world = lease_world(
        Some("10.77.0.100-10.77.0.100"),
        vec![Machine::discovered(Mac(MAC))],
    );
    let addr = obtain(&mut world, MAC);
    let release = world.send(
        fixtures::udhcpc(RELEASE, MAC)
            .ciaddr(addr)
            .server(ADVERTISE),
    );
    assert!(release.out.is_none());
    assert_eq!(
        release.outcome.event.as_ref().map(|e| e.0),
        Some(EventKind::DhcpRelease)
    );
    assert!(world.leases.get(&Mac(MAC)).is_none());
    assert_eq!(obtain(&mut world, OTHER_MAC), addr);
    let dirty = world.leases.take_dirty();
    assert!(
        dirty.contains(&(Mac(MAC), None)),
        "release is persisted as a delete"
    );
}

#[test]
fn decline_quarantines_the_address() {
    let mut world = lease_world(
        Some("10.77.0.100-10.77.0.101"),
        vec![Machine::discovered(Mac(MAC))],
    );
    let addr = obtain(&mut world, MAC);
    let decline = world.send(
        fixtures::udhcpc(DECLINE, MAC)
            .requested(addr)
            .server(ADVERTISE),
    );
    assert!(decline.out.is_none());
    assert_eq!(
        decline.outcome.event.as_ref().map(|e| e.0),
        Some(EventKind::DhcpDecline)
    );
    // The same client asks again and gets the other address, not the declined one.
    assert_eq!(obtain(&mut world, MAC), ip(101));
    assert_eq!(
        world.send(fixtures::udhcpc(DISCOVER, OTHER_MAC)).dropped(),
        Some("pool-exhausted")
    );
    world.clock.advance(600_001);
    assert_eq!(obtain(&mut world, OTHER_MAC), addr);
}

#[test]
fn init_reboot_with_a_foreign_address_is_nakked_only_when_authoritative() {
    let request = || fixtures::udhcpc(REQUEST, MAC).requested(Ipv4Addr::new(192, 168, 1, 50));
    let mut with_pool = lease_world(Some("10.77.0.100-10.77.0.110"), vec![]);
    assert_eq!(with_pool.send(request()).reply().msg_type(), NAK);
    // Without a pool, unknown clients may belong to another DHCP server: stay silent.
    let mut without_pool = lease_world(None, vec![]);
    assert_eq!(without_pool.send(request()).dropped(), Some("no-binding"));
}

#[test]
fn init_reboot_with_a_free_pool_address_is_acked() {
    let mut world = lease_world(Some("10.77.0.100-10.77.0.110"), vec![]);
    let ack = world
        .send(fixtures::udhcpc(REQUEST, MAC).requested(ip(105)))
        .reply();
    assert_eq!(ack.msg_type(), ACK);
    assert_eq!(ack.yiaddr(), ip(105));
}

#[test]
fn inform_gets_settings_without_a_lease() {
    let mut world = lease_world(None, vec![static_machine(MAC, "10.77.0.11/24")]);
    let handled = world.handle(
        Via::Dhcp,
        &fixtures::udhcpc(INFORM, MAC).ciaddr(ip(11)).bytes(),
        SocketAddrV4::new(ip(11), 68),
    );
    let ack = handled.reply();
    assert_eq!(ack.msg_type(), ACK);
    assert_eq!(ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(ack.opt(51), None);
    assert_eq!(ack.opt(1), Some(&[255, 255, 255, 0][..]));
    assert_eq!(ack.dest, Dest::Unicast(SocketAddrV4::new(ip(11), 68)));
}

#[test]
fn static_address_wins_over_an_old_pool_lease() {
    let mut world = lease_world(Some("10.77.0.100-10.77.0.110"), vec![]);
    let pooled = obtain(&mut world, MAC);
    // The operator now gives the machine a static address.
    world.snapshot = Snapshot::from_machines(vec![static_machine(MAC, "10.77.0.11/24")]);
    let renew = world.handle(
        Via::Dhcp,
        &fixtures::udhcpc(REQUEST, MAC).ciaddr(pooled).bytes(),
        SocketAddrV4::new(pooled, 68),
    );
    assert_eq!(renew.reply().msg_type(), NAK);
    assert_eq!(obtain(&mut world, MAC), ip(11));
}

#[tokio::test]
async fn leases_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).await.unwrap();
    let mut world = lease_world(Some("10.77.0.100-10.77.0.110"), vec![]);
    let addr = obtain(&mut world, MAC);
    db.save_leases(&world.leases.take_dirty()).await.unwrap();
    db.close().await;

    let db = Db::open(dir.path()).await.unwrap();
    let mut restarted = lease_world(Some("10.77.0.100-10.77.0.110"), vec![]);
    restarted.leases = LeaseTable::from_rows(db.load_leases().await.unwrap());
    // Another client cannot take the address; the owner gets it back on DISCOVER.
    assert_ne!(obtain(&mut restarted, OTHER_MAC), addr);
    let offer = restarted.send(fixtures::udhcpc(DISCOVER, MAC)).reply();
    assert_eq!(offer.yiaddr(), addr);
}

/// CPU cost of the hot path without syscalls: decode → decide → encode.
/// `cargo test --release --lib dhcp::tests::bench_decide -- --ignored --nocapture`
#[test]
#[ignore = "benchmark; run by hand in release mode"]
fn bench_decide_proxy_and_full() {
    for (mode, pool) in [
        (DhcpMode::Proxy, None),
        (DhcpMode::Full, Some("10.77.0.2-10.77.255.254")),
    ] {
        let mut world = World::new(mode, pool, vec![]);
        world.config.subnet = "10.77.0.0/16".parse().unwrap();
        let packets: Vec<Vec<u8>> = (0..10_000u32)
            .map(|i| {
                let b = i.to_be_bytes();
                fixtures::ovmf_pxe(DISCOVER, [0x52, 0x54, 0x01, b[1], b[2], b[3]]).bytes()
            })
            .collect();
        let started = std::time::Instant::now();
        for p in &packets {
            assert!(world.handle(Via::Dhcp, p, CLIENT).out.is_some());
        }
        let took = started.elapsed();
        println!(
            "{mode}: {} DISCOVERs decoded, decided and encoded in {took:?} ({:?} each)",
            packets.len(),
            took / packets.len() as u32
        );
    }
}

// ---- run() over real UDP sockets on loopback ---------------------------------------------

mod udp {
    use std::net::UdpSocket as StdUdpSocket;

    use tokio::net::UdpSocket;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::dhcp::{bind, run, DhcpDeps, DhcpSockets};
    use crate::inventory::{Inventory, Neighbours, Recorder};
    use crate::support::clock::SharedClock;
    use crate::support::metrics::Metrics;

    const LO_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x10, 0x00, 0x01];

    struct Appliance {
        deps: DhcpDeps,
        writer: tokio::task::JoinHandle<()>,
        dhcp_port: u16,
        pxe_port: Option<u16>,
        cancel: CancellationToken,
        server: tokio::task::JoinHandle<()>,
    }

    async fn start(db: &Db, mode: DhcpMode, clock: SharedClock) -> Appliance {
        let interface = crate::net::interface(Some("lo")).unwrap();
        let config = DhcpConfig {
            mode,
            port: 0,
            pxe_port: 0,
            subnet: "127.0.0.0/8".parse().unwrap(),
            pool: Some("127.0.0.100-127.0.0.120".parse().unwrap()),
            router: None,
            dns: vec![],
            lease_secs: 3600,
            router_advertisements: false,
            router_advertisements_required: false,
        };
        let mut boot = boot_config(PathBuf::from("/nonexistent"));
        boot.advertise_ip = Ipv4Addr::LOCALHOST;
        let sockets: DhcpSockets = bind(&config, &interface).unwrap();
        let dhcp_port = sockets.dhcp.local_addr().unwrap().port();
        let pxe_port = sockets.pxe.as_ref().map(|s| s.local_addr().unwrap().port());
        let inventory = Inventory::default();
        let metrics = Metrics::default();
        let (recorder, writer) = Recorder::new(db.clone(), clock, metrics.clone());
        let deps = DhcpDeps {
            config,
            boot,
            interface,
            inventory,
            recorder,
            neighbours: Neighbours::default(),
            metrics,
            db: db.clone(),
        };
        let cancel = CancellationToken::new();
        let server = tokio::spawn(run(deps.clone(), sockets, cancel.clone()));
        Appliance {
            deps,
            writer: tokio::spawn(writer),
            dhcp_port,
            pxe_port,
            cancel,
            server,
        }
    }

    impl Appliance {
        /// Cancels `run`, waits for it and for the event writer to drain.
        async fn stop(self) -> (Metrics, Neighbours) {
            self.cancel.cancel();
            tokio::time::timeout(Duration::from_secs(5), self.server)
                .await
                .expect("run returns after cancel")
                .unwrap();
            let DhcpDeps {
                metrics,
                neighbours,
                recorder,
                ..
            } = self.deps;
            drop(recorder);
            tokio::time::timeout(Duration::from_secs(5), self.writer)
                .await
                .unwrap()
                .unwrap();
            (metrics, neighbours)
        }
    }

    async fn exchange(client: &UdpSocket, port: u16, packet: Packet) -> Reply {
        client
            .send_to(&packet.bytes(), (Ipv4Addr::LOCALHOST, port))
            .await
            .unwrap();
        let mut buf = [0u8; 1500];
        let (len, from) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .expect("a reply within 5 s")
            .unwrap();
        assert_eq!(from, (Ipv4Addr::LOCALHOST, port).into(), "reply source");
        let reply = Reply::parse(&buf[..len], Dest::Broadcast(0));
        assert_eq!(reply.xid(), packet.xid);
        reply
    }

    #[tokio::test]
    async fn run_serves_discover_and_request_over_udp_and_flushes_leases_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).await.unwrap();
        let clock: SharedClock = ManualClock::new(T0);
        let app = start(&db, DhcpMode::Full, clock.clone()).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();

        let offer = exchange(
            &client,
            app.dhcp_port,
            fixtures::ipxe_efi(DISCOVER, LO_MAC).xid(1),
        )
        .await;
        assert_eq!(offer.msg_type(), OFFER);
        assert_eq!(offer.yiaddr(), Ipv4Addr::new(127, 0, 0, 100));
        assert_eq!(offer.opt(54), Some(&[127, 0, 0, 1][..]));
        let ack = exchange(
            &client,
            app.dhcp_port,
            fixtures::ipxe_efi(REQUEST, LO_MAC)
                .xid(2)
                .requested(offer.yiaddr())
                .server(Ipv4Addr::LOCALHOST),
        )
        .await;
        assert_eq!(ack.msg_type(), ACK);
        assert_eq!(ack.yiaddr(), offer.yiaddr());

        let (metrics, neighbours) = app.stop().await;
        assert_eq!(neighbours.lookup(offer.yiaddr(), T0), Some(Mac(LO_MAC)));
        let text = metrics.render();
        assert!(
            text.contains(r#"bootplane_dhcp_replies_total{kind="offer"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"bootplane_dhcp_replies_total{kind="ack"} 1"#),
            "{text}"
        );
        let leases = db.load_leases().await.unwrap();
        assert_eq!(leases.len(), 1, "the ACKed lease was flushed");
        assert_eq!(leases[0].mac, Mac(LO_MAC));
        assert_eq!(leases[0].ip, offer.yiaddr());
        assert_eq!(leases[0].expires_at, T0 + 3_600_000);
        let kinds: Vec<EventKind> = db
            .events(Mac(LO_MAC), 10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds,
            vec![
                EventKind::Discovered,
                EventKind::DhcpOffer,
                EventKind::DhcpAck
            ]
        );

        // A restarted server knows the lease: another client does not get the address, and
        // the owner's init-reboot REQUEST is ACKed.
        let app = start(&db, DhcpMode::Full, clock).await;
        let other = exchange(
            &client,
            app.dhcp_port,
            fixtures::udhcpc(DISCOVER, OTHER_MAC).xid(3),
        )
        .await;
        assert_ne!(other.yiaddr(), offer.yiaddr());
        let again = exchange(
            &client,
            app.dhcp_port,
            fixtures::udhcpc(REQUEST, LO_MAC)
                .xid(4)
                .requested(offer.yiaddr()),
        )
        .await;
        assert_eq!(again.msg_type(), ACK);
        assert_eq!(again.yiaddr(), offer.yiaddr());
        app.stop().await;
    }

    /// An ACK promises the client its address for the lease: it goes out only once the
    /// binding is written, so a crash right after it cannot lose the lease.
    #[tokio::test]
    async fn an_ack_goes_out_only_after_its_binding_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).await.unwrap();
        let clock: SharedClock = ManualClock::new(T0);
        let app = start(&db, DhcpMode::Full, clock).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // Several clients one after another, so a flush that merely happened to run between
        // the REQUEST and the check does not pass the test by luck.
        for n in 0..10u8 {
            let mac = [0x52, 0x54, 0x00, 0x10, 0x01, n];
            let offer = exchange(
                &client,
                app.dhcp_port,
                fixtures::ipxe_efi(DISCOVER, mac).xid(u32::from(n) * 2 + 1),
            )
            .await;
            assert_eq!(offer.msg_type(), OFFER);
            let ack = exchange(
                &client,
                app.dhcp_port,
                fixtures::ipxe_efi(REQUEST, mac)
                    .xid(u32::from(n) * 2 + 2)
                    .requested(offer.yiaddr())
                    .server(Ipv4Addr::LOCALHOST),
            )
            .await;
            assert_eq!(ack.msg_type(), ACK);
            let leases = db.load_leases().await.unwrap();
            assert!(
                leases
                    .iter()
                    .any(|l| l.mac == Mac(mac) && l.ip == ack.yiaddr()),
                "client {n}: ACKed {} before its lease was written: {leases:?}",
                ack.yiaddr()
            );
        }
        app.stop().await;
    }

    #[tokio::test]
    async fn run_answers_proxy_discover_on_67_and_request_on_4011() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).await.unwrap();
        let app = start(&db, DhcpMode::Proxy, crate::support::clock::system()).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let offer = exchange(
            &client,
            app.dhcp_port,
            fixtures::ovmf_pxe(DISCOVER, LO_MAC).xid(7),
        )
        .await;
        assert_eq!(offer.msg_type(), OFFER);
        assert_eq!(offer.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(offer.file(), "ipxe.efi");
        assert_eq!(offer.siaddr(), Ipv4Addr::LOCALHOST);
        let pxe_port = app.pxe_port.expect("proxy mode binds 4011");
        let ack = exchange(
            &client,
            pxe_port,
            fixtures::ovmf_pxe(REQUEST, LO_MAC)
                .xid(8)
                .ciaddr(Ipv4Addr::new(127, 0, 0, 50)),
        )
        .await;
        assert_eq!(ack.msg_type(), ACK);
        assert_eq!(ack.file(), "ipxe.efi");
        // Garbage is dropped, counted, and the server keeps serving.
        client
            .send_to(b"not dhcp", (Ipv4Addr::LOCALHOST, app.dhcp_port))
            .await
            .unwrap();
        let after = exchange(
            &client,
            app.dhcp_port,
            fixtures::ovmf_pxe(DISCOVER, LO_MAC).xid(9),
        )
        .await;
        assert_eq!(after.msg_type(), OFFER);
        let (metrics, neighbours) = app.stop().await;
        assert!(
            neighbours.is_empty(),
            "proxyDHCP leases nothing: what a client says it holds is not learned"
        );
        let text = metrics.render();
        assert!(
            text.contains(r#"bootplane_dhcp_dropped_total{reason="malformed"} 1"#),
            "{text}"
        );
        let events = db.events(Mac(LO_MAC), 10).await.unwrap();
        let machine = db.get_machine(Mac(LO_MAC)).await.unwrap().unwrap();
        assert_eq!(machine.last_arch, Some(7));
        assert_eq!(
            machine.smbios_uuid.as_deref(),
            Some("7e57ab1e-0000-4000-8000-000000000001")
        );
        assert_eq!(events[1].kind, EventKind::ProxyOffer);
        assert_eq!(events[1].detail, "file=ipxe.efi arch=7");
        assert_eq!(events[2].kind, EventKind::ProxyAck);
    }

    /// Proxy-offer latency and throughput for 10,000 distinct MACs over loopback UDP.
    /// `cargo test --release --lib dhcp::tests::udp::bench -- --ignored --nocapture`
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "benchmark; run by hand in release mode"]
    async fn bench_proxy_offers_for_10k_macs() {
        const N: u32 = 10_000;
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).await.unwrap();
        let app = start(&db, DhcpMode::Proxy, crate::support::clock::system()).await;
        // A receive buffer large enough for a window of replies.
        let client = {
            let sock = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::DGRAM,
                Some(socket2::Protocol::UDP),
            )
            .unwrap();
            sock.set_recv_buffer_size(4 << 20).unwrap();
            sock.bind(&SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0).into())
                .unwrap();
            sock.set_nonblocking(true).unwrap();
            UdpSocket::from_std(sock.into()).unwrap()
        };
        let packet = |i: u32| {
            let b = i.to_be_bytes();
            fixtures::ovmf_pxe(DISCOVER, [0x52, 0x54, 0x01, b[1], b[2], b[3]])
                .xid(i)
                .bytes()
        };
        let mut buf = [0u8; 1500];
        // Latency: one request at a time.
        let mut latencies = Vec::with_capacity(N as usize);
        let started = std::time::Instant::now();
        for i in 0..N {
            let bytes = packet(i);
            let t = std::time::Instant::now();
            client
                .send_to(&bytes, (Ipv4Addr::LOCALHOST, app.dhcp_port))
                .await
                .unwrap();
            let (len, _) = client.recv_from(&mut buf).await.unwrap();
            latencies.push(t.elapsed());
            assert_eq!(
                u32::from_be_bytes(buf[4..8].try_into().unwrap()),
                i,
                "{len}"
            );
        }
        let serial = started.elapsed();
        let mut slowest: Vec<(Duration, usize)> = latencies.iter().copied().zip(0..).collect();
        slowest.sort();
        println!(
            "slowest (latency, request #): {:?}",
            &slowest[slowest.len() - 3..]
        );
        latencies.sort();
        let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
        println!(
            "sequential: {N} proxy offers in {serial:?}: p50 {:?} p99 {:?} max {:?}",
            pct(0.50),
            pct(0.99),
            pct(1.0)
        );
        // Throughput: a window of 256 requests in flight.
        let sent_at = std::sync::Arc::new(std::sync::Mutex::new(vec![None; N as usize]));
        let started = std::time::Instant::now();
        let mut latencies = Vec::with_capacity(N as usize);
        let mut next = 0u32;
        let mut received = 0u32;
        while received < N {
            while next < N && next - received < 256 {
                let bytes = packet(N + next);
                sent_at.lock().unwrap()[next as usize] = Some(std::time::Instant::now());
                client
                    .send_to(&bytes, (Ipv4Addr::LOCALHOST, app.dhcp_port))
                    .await
                    .unwrap();
                next += 1;
            }
            let (_, _) = tokio::time::timeout(Duration::from_secs(2), client.recv_from(&mut buf))
                .await
                .expect("no reply lost")
                .unwrap();
            let xid = u32::from_be_bytes(buf[4..8].try_into().unwrap()) - N;
            let t = sent_at.lock().unwrap()[xid as usize].unwrap();
            latencies.push(t.elapsed());
            received += 1;
        }
        let burst = started.elapsed();
        latencies.sort();
        let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
        println!(
            "windowed (256 in flight): {N} proxy offers in {burst:?} = {:.0} replies/s; p50 {:?} p99 {:?}",
            f64::from(N) / burst.as_secs_f64(),
            pct(0.50),
            pct(0.99)
        );
        let (metrics, _) = app.stop().await;
        assert!(metrics.render().contains(r#"kind="proxy-offer"} 20000"#));
    }

    #[test]
    fn bind_errors_say_what_to_do() {
        let denied = crate::dhcp::DhcpError::from_bind(67, std::io::Error::from_raw_os_error(13));
        let text = denied.to_string();
        assert!(text.contains("CAP_NET_BIND_SERVICE"), "{text}");
        assert!(
            text.contains("setcap 'cap_net_bind_service,cap_net_raw=+ep'"),
            "{text}"
        );
        assert!(text.contains("sudo"), "{text}");
        assert!(text.contains("--dhcp-mode off"), "{text}");
        let busy = crate::dhcp::DhcpError::from_bind(67, std::io::Error::from_raw_os_error(98));
        assert!(busy.to_string().contains("another DHCP server"), "{busy}");
        assert!(busy.to_string().contains("dnsmasq"), "{busy}");
    }

    #[test]
    fn binding_a_port_held_by_another_socket_reports_it_in_use() {
        let holder = StdUdpSocket::bind("0.0.0.0:0").unwrap();
        let port = holder.local_addr().unwrap().port();
        let config = DhcpConfig {
            port,
            pxe_port: 0,
            ..dhcp_config(DhcpMode::Proxy, None)
        };
        let interface = crate::net::interface(Some("lo")).unwrap();
        let err = bind(&config, &interface).unwrap_err();
        assert!(matches!(err, crate::dhcp::DhcpError::InUse { .. }), "{err}");
    }
}

/// The fuzzer's DHCP seeds (tests/fuzz/seeds/dhcp) are these fixtures: each firmware's
/// DISCOVER then REQUEST (for its static address when it has one), for a known and an unknown
/// MAC, in each mode and on each port, framed as `testkit::fuzz::dhcp` reads its input.
/// `BOOTPLANE_WRITE_FUZZ_SEEDS=1` writes them; otherwise the committed ones must match.
#[test]
fn fuzz_seeds_are_the_firmware_fixtures() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/seeds/dhcp");
    type Firmware = fn(u8, [u8; 6]) -> Packet;
    let firmware: [(&str, Firmware); 6] = [
        ("ipxe-bios", fixtures::ipxe_bios),
        ("ovmf-pxe", fixtures::ovmf_pxe),
        ("ipxe-efi", fixtures::ipxe_efi),
        ("ovmf-http", fixtures::ovmf_http),
        ("arm64-pxe", fixtures::arm64_pxe),
        ("udhcpc", fixtures::udhcpc),
    ];
    // node-3 of the fuzz inventory (10.77.0.13), and a MAC it does not know.
    let macs = [
        ("known", [0x52, 0x54, 0, 0x77, 0, 3], Some(ip(13))),
        ("unknown", [0x52, 0x54, 0, 0x77, 0, 0x99], None),
    ];
    let mut expected = std::collections::BTreeMap::new();
    for (name, make) in firmware {
        for (who, mac, addr) in macs {
            let discover = make(DISCOVER, mac).bytes();
            let mut request = make(REQUEST, mac).server(ADVERTISE);
            if let Some(addr) = addr {
                request = request.requested(addr);
            }
            let request = request.bytes();
            for selector in 0u8..4 {
                let mut seed = vec![selector];
                for packet in [&discover, &request] {
                    seed.extend_from_slice(&(packet.len() as u16).to_be_bytes());
                    seed.extend_from_slice(packet);
                }
                expected.insert(format!("{name}-{who}-{selector}"), seed);
            }
        }
    }
    if std::env::var_os("BOOTPLANE_WRITE_FUZZ_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, seed) in &expected {
            std::fs::write(dir.join(name), seed).unwrap();
        }
    }
    for (name, seed) in &expected {
        let committed = std::fs::read(dir.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e} (BOOTPLANE_WRITE_FUZZ_SEEDS=1 writes it)"));
        assert_eq!(&committed, seed, "{name} differs from its fixture");
    }
}
