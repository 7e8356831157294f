//! Domain types shared by every subsystem: MAC addresses, roles, machines, events.
//!
//! These types carry no SQL and no wire format; `db` converts rows to them and the protocol
//! modules read them.

pub mod assets;
pub mod lifecycle;
pub mod timeline;

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A unicast Ethernet MAC address, always shown lowercase with colons.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MacError {
    #[error("'{0}' is not a MAC address (expected six hex pairs such as 52:54:00:12:34:56)")]
    Syntax(String),
    #[error("'{0}' is a multicast address, not a network card's address")]
    Multicast(String),
    #[error("'{0}' is the all-zero address")]
    Zero(String),
}

impl Mac {
    /// Hyphenated lowercase form, as iPXE's `${mac:hexhyp}` prints it.
    pub fn hyphenated(&self) -> String {
        self.to_string().replace(':', "-")
    }

    /// The IEEE OUI (first three octets).
    pub fn oui(&self) -> [u8; 3] {
        [self.0[0], self.0[1], self.0[2]]
    }
}

impl FromStr for Mac {
    type Err = MacError;

    /// Accepts `52:54:00:aa:bb:cc`, `52-54-00-AA-BB-CC`, `5254.00aa.bbcc` and `525400aabbcc`.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let trimmed = input.trim();
        let hex: String = trimmed
            .chars()
            .filter(|c| !matches!(c, ':' | '-' | '.'))
            .collect();
        let separators = trimmed.len() - hex.len();
        let shape_ok = hex.len() == 12
            && hex.chars().all(|c| c.is_ascii_hexdigit())
            && matches!(separators, 0 | 2 | 5);
        if !shape_ok {
            return Err(MacError::Syntax(input.to_string()));
        }
        let mut bytes = [0u8; 6];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16)
                .map_err(|_| MacError::Syntax(input.to_string()))?;
        }
        if bytes == [0; 6] {
            return Err(MacError::Zero(input.to_string()));
        }
        if bytes[0] & 1 == 1 {
            return Err(MacError::Multicast(input.to_string()));
        }
        Ok(Mac(bytes))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Defines a string-backed enum with parsing, display and serde in one place.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(&self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "'{}' is not one of: {}",
                        other,
                        [$($text),+].join(", ")
                    )),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // `pad`, so a width such as `{:<12}` lines up table columns.
                f.pad(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                string_schema(None, None).enum_values(Some([$($text),+])).into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

/// An OpenAPI string schema (for types with hand-written serde).
fn string_schema(pattern: Option<&str>, example: Option<&str>) -> utoipa::openapi::ObjectBuilder {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .pattern(pattern)
        .examples(example.map(|e| serde_json::Value::String(e.into())))
}

impl utoipa::PartialSchema for Mac {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        string_schema(None, Some("52:54:00:12:34:56"))
            .description(Some("MAC address, lowercase and colon-separated"))
            .into()
    }
}

impl utoipa::ToSchema for Mac {}

impl utoipa::PartialSchema for Ipv4Cidr {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        string_schema(None, Some("192.168.1.21/24"))
            .description(Some("IPv4 address with prefix length"))
            .into()
    }
}

impl utoipa::ToSchema for Ipv4Cidr {}

text_enum!(
    /// What a machine becomes in its cluster.
    Role {
        Unassigned => "unassigned",
        Controlplane => "controlplane",
        Worker => "worker",
    }
);

text_enum!(
    /// How an installed machine that network-boots is sent to its disk.
    DiskHandoff {
        Exit => "exit",
        Http404 => "http-404",
        Sanboot => "sanboot",
    }
);

text_enum!(
    /// Where a machine is on its way into the cluster. Only evidence from the node (its Talos
    /// API answering with the cluster's certificates) moves it to `installed` and `ready`.
    Lifecycle {
        Discovered => "discovered",
        Assigned => "assigned",
        Booting => "booting",
        ConfigServed => "config-served",
        Installed => "installed",
        Ready => "ready",
    }
);

text_enum!(
    /// Which iPXE build x86-64 UEFI firmware is given over TFTP.
    EfiBinary {
        IpxeEfi => "ipxe.efi",
        SnponlyEfi => "snponly.efi",
    }
);

text_enum!(
    /// What happened to a machine; the event log's vocabulary.
    EventKind {
        Discovered => "discovered",
        DhcpOffer => "dhcp-offer",
        DhcpAck => "dhcp-ack",
        DhcpNak => "dhcp-nak",
        DhcpRelease => "dhcp-release",
        DhcpDecline => "dhcp-decline",
        ProxyOffer => "proxy-offer",
        ProxyAck => "proxy-ack",
        TftpServed => "tftp-served",
        ScriptServed => "script-served",
        KernelFetched => "kernel-fetched",
        InitramfsFetched => "initramfs-fetched",
        ConfigFetched => "config-fetched",
        Changed => "changed",
        State => "state",
        ReportedIn => "reported-in",
        Bootstrap => "bootstrap",
        EtcdMemberRemoved => "etcd-member-removed",
        Reinstall => "reinstall",
        TalosEvent => "talos-event",
        NotServed => "not-served",
    }
);

/// An IPv4 address with its prefix length, as in `192.168.1.10/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, String> {
        if prefix > 32 {
            return Err(format!("prefix /{prefix} is longer than 32"));
        }
        Ok(Ipv4Cidr { addr, prefix })
    }

    pub fn netmask(&self) -> Ipv4Addr {
        let bits = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        };
        Ipv4Addr::from(bits)
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & u32::from(self.netmask()))
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) | !u32::from(self.netmask()))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & u32::from(self.netmask()) == u32::from(self.network())
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("'{s}' needs a prefix length, as in 192.168.1.10/24"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("'{addr}' is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| format!("'{prefix}' is not a prefix length"))?;
        Ipv4Cidr::new(addr, prefix)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Ipv4Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A machine in the inventory.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Machine {
    pub mac: Mac,
    pub cluster: String,
    pub role: Role,
    pub hostname: Option<String>,
    pub ip: Option<Ipv4Cidr>,
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub gateway: Option<Ipv4Addr>,
    #[schema(value_type = Vec<String>)]
    pub dns: Vec<Ipv4Addr>,
    pub install_disk: Option<String>,
    /// Wipe the install disk when Talos installs.
    pub wipe: bool,
    pub disk_handoff: DiskHandoff,
    pub efi_binary: Option<EfiBinary>,
    /// Talos version pinned for this machine; `None` follows its cluster's version.
    pub talos_version: Option<String>,
    /// Runs Talos from the network at every boot, never installed (Talos 1.14 on, workers
    /// only): every network boot gets Talos again, never the disk hand-off.
    pub diskless: bool,
    /// Talos has run with the cluster's certificates (its API answered): installed on disk,
    /// or for a diskless machine up since it was assigned.
    pub installed: bool,
    pub state: Lifecycle,
    pub state_since: Option<i64>,
    /// When the machine was last sent to its disk by a network boot.
    pub handoff_at: Option<i64>,
    /// Milliseconds since the Unix epoch.
    pub first_seen: Option<i64>,
    pub last_seen: Option<i64>,
    /// Raw DHCP option 93 value last seen from this machine.
    pub last_arch: Option<u16>,
    pub smbios_uuid: Option<String>,
    pub serial: Option<String>,
}

impl Machine {
    /// What an operator's edit changed, field by field ("hostname w-1 -> w-9, role worker ->
    /// controlplane"), for the machine's event log; "no change" when nothing did.
    pub fn changes_from(&self, before: &Machine) -> String {
        fn text<T: ToString>(v: &Option<T>) -> String {
            v.as_ref().map_or_else(|| "none".to_string(), T::to_string)
        }
        fn list(v: &[Ipv4Addr]) -> String {
            if v.is_empty() {
                return "none".into();
            }
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        }
        let fields = [
            ("cluster", before.cluster.clone(), self.cluster.clone()),
            ("role", before.role.to_string(), self.role.to_string()),
            ("hostname", text(&before.hostname), text(&self.hostname)),
            ("ip", text(&before.ip), text(&self.ip)),
            ("gateway", text(&before.gateway), text(&self.gateway)),
            ("dns", list(&before.dns), list(&self.dns)),
            (
                "install disk",
                text(&before.install_disk),
                text(&self.install_disk),
            ),
            ("wipe", before.wipe.to_string(), self.wipe.to_string()),
            (
                "disk hand-off",
                before.disk_handoff.to_string(),
                self.disk_handoff.to_string(),
            ),
            (
                "efi binary",
                text(&before.efi_binary),
                text(&self.efi_binary),
            ),
            (
                "talos version",
                text(&before.talos_version),
                text(&self.talos_version),
            ),
            (
                "diskless",
                before.diskless.to_string(),
                self.diskless.to_string(),
            ),
        ];
        let changed: Vec<String> = fields
            .into_iter()
            .filter(|(_, old, new)| old != new)
            .map(|(name, old, new)| format!("{name} {old} -> {new}"))
            .collect();
        if changed.is_empty() {
            "no change".into()
        } else {
            changed.join(", ")
        }
    }

    /// A freshly discovered machine with nothing assigned.
    pub fn discovered(mac: Mac) -> Self {
        Machine {
            mac,
            cluster: DEFAULT_CLUSTER.to_string(),
            role: Role::Unassigned,
            hostname: None,
            ip: None,
            gateway: None,
            dns: Vec::new(),
            install_disk: None,
            wipe: false,
            disk_handoff: DiskHandoff::Exit,
            efi_binary: None,
            talos_version: None,
            diskless: false,
            installed: false,
            state: Lifecycle::Discovered,
            state_since: None,
            handoff_at: None,
            first_seen: None,
            last_seen: None,
            last_arch: None,
            smbios_uuid: None,
            serial: None,
        }
    }

    pub fn is_assigned(&self) -> bool {
        self.role != Role::Unassigned
    }
}

text_enum!(
    /// The level a config patch applies at, in this order.
    PatchScope {
        Cluster => "cluster",
        Controlplane => "controlplane",
        Worker => "worker",
        Machine => "machine",
    }
);

/// A cluster's settings (its secrets are kept apart and never in this struct).
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Cluster {
    pub name: String,
    /// `https://<vip-or-lb>:6443`; `None` until `cluster init`.
    pub endpoint: Option<String>,
    /// Layer-2 VIP Talos configures on the control planes.
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub vip: Option<Ipv4Addr>,
    pub talos_version: Option<String>,
    pub kubernetes_version: Option<String>,
    pub install_image: Option<String>,
    pub pod_subnets: Vec<String>,
    pub service_subnets: Vec<String>,
    pub dns_domain: String,
    /// The subnets etcd advertises and the kubelet takes its node IP from.
    #[schema(value_type = String, example = "auto")]
    pub node_subnets: NodeSubnets,
    /// Nameservers of nodes without their own (`machines set --dns`); empty: Talos's defaults
    /// (1.1.1.1 and 8.8.8.8). `cluster init` fills in the appliance host's resolvers.
    #[schema(value_type = Vec<String>)]
    pub nameservers: Vec<Ipv4Addr>,
    /// When the secrets bundle was made or imported; `None` until then.
    pub initialised_at: Option<i64>,
    /// Bumped when every control plane was wiped: each generation is bootstrapped once.
    pub generation: i64,
    /// The operator chose a single control plane: bootstrap without waiting for three.
    pub single_controlplane: bool,
    pub bootstrapped_at: Option<i64>,
}

/// Which subnets a node's etcd advertises (`cluster.etcd.advertisedSubnets`, control planes)
/// and its kubelet takes the node IP from (`nodeIP.validSubnets`): with more than one address
/// on a node, Talos otherwise picks one by itself, and etcd peers or the kubelet may pick an
/// address the other nodes cannot reach.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodeSubnets {
    /// The subnet of each node's own static address.
    #[default]
    Auto,
    /// Not written: Talos picks.
    Off,
    /// These subnets (IPv4 or IPv6 CIDRs) on every node.
    Given(Vec<String>),
}

impl NodeSubnets {
    /// The subnets for a node whose own address is `ip`; empty when off.
    pub fn for_node(&self, ip: Ipv4Cidr) -> Vec<String> {
        match self {
            NodeSubnets::Auto => vec![format!("{}/{}", ip.network(), ip.prefix)],
            NodeSubnets::Off => Vec::new(),
            NodeSubnets::Given(list) => list.clone(),
        }
    }
}

impl std::fmt::Display for NodeSubnets {
    /// `auto`, `none` or the comma-separated list, as operators type it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeSubnets::Auto => f.write_str("auto"),
            NodeSubnets::Off => f.write_str("none"),
            NodeSubnets::Given(list) => f.write_str(&list.join(",")),
        }
    }
}

impl Serialize for NodeSubnets {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Where nodes push their events (`talos.events.sink`, `EventSinkConfig`: `host:port`) and
/// kernel log (`talos.logging.kernel`, `KmsgLogConfig`: a URL); `None` where bootplane does
/// not receive it (the receiver is off, or the operator's own kernel argument names another).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReportTargets {
    pub events_endpoint: Option<String>,
    pub kernel_log_url: Option<String>,
}

/// The LAN the last `serve` answered on: a machine's static address must be in `subnet`,
/// outside full DHCP's dynamic `pool`, and none of the appliance's `own` addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LanFacts {
    pub subnet: Ipv4Cidr,
    /// First and last address of the dynamic pool (full DHCP mode only).
    pub pool: Option<(Ipv4Addr, Ipv4Addr)>,
    pub own: Vec<Ipv4Addr>,
}

/// The bootstrap decision of one cluster generation.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct BootstrapRecord {
    pub generation: i64,
    pub target_mac: Mac,
    #[schema(value_type = String, format = Ipv4)]
    pub target_ip: Ipv4Addr,
    pub decided_at: i64,
    pub called_at: Option<i64>,
    pub calls: i64,
    pub outcome: Option<BootstrapResult>,
    pub detail: String,
    pub finished_at: Option<i64>,
}

text_enum!(
    /// How a cluster generation's bootstrap ended (`adopted`: etcd already ran, no call was
    /// needed). An unknown outcome is no result: the call stays marked, the hold-off applies.
    BootstrapResult {
        Bootstrapped => "bootstrapped",
        AlreadyBootstrapped => "already-bootstrapped",
        Adopted => "adopted",
        Failed => "failed",
    }
);

impl BootstrapResult {
    /// Whether etcd runs on the target after it: the cluster counts as bootstrapped.
    pub fn started_etcd(&self) -> bool {
        !matches!(self, BootstrapResult::Failed)
    }
}

/// A stored config patch.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PatchRecord {
    pub scope: PatchScope,
    pub mac: Option<Mac>,
    pub position: i64,
    pub name: String,
    pub body: String,
}

/// The cluster every machine belongs to until a second cluster exists.
pub const DEFAULT_CLUSTER: &str = "default";

/// One entry in a machine's append-only event log.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Event {
    pub mac: Mac,
    pub at: i64,
    pub kind: EventKind,
    pub detail: String,
}

/// One kernel message a node streamed to bootplane (`talos.logging.kernel=`), as stored in
/// its bounded boot log. Fields other than `msg` are as Talos sent them, when it did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct BootLogLine {
    pub mac: Mac,
    /// When bootplane received it, milliseconds since the Unix epoch.
    pub at: i64,
    /// The node's own timestamp (`talos-time`, RFC 3339).
    pub talos_time: Option<String>,
    /// Kernel facility, e.g. `kern`, `daemon`.
    pub facility: Option<String>,
    /// Kernel priority, e.g. `info`, `err`.
    pub priority: Option<String>,
    /// The kernel's sequence number of the message.
    pub seq: Option<i64>,
    /// Microseconds since the node booted.
    pub clock: Option<i64>,
    pub msg: String,
}

/// Checks a hostname against RFC 1123 label rules (one label, as Talos's static hostname).
pub fn validate_hostname(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{name}' is not a valid hostname (lowercase letters, digits and '-', at most 63, not starting or ending with '-')"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_accepts_common_spellings_and_normalises() {
        for s in [
            "52:54:00:AA:bb:01",
            "52-54-00-aa-bb-01",
            "5254.00aa.bb01",
            "525400aabb01",
            " 52:54:00:aa:bb:01 ",
        ] {
            let mac: Mac = s.parse().unwrap();
            assert_eq!(mac.to_string(), "52:54:00:aa:bb:01", "{s}");
        }
    }

    #[test]
    fn mac_rejects_odd_input() {
        for s in [
            "",
            "52:54:00:aa:bb",
            "52:54:00:aa:bb:01:02",
            "zz:54:00:aa:bb:01",
            "52:54:00:aa:bb:0",
            "52::54:00:aa:bb:01",
            "52:54:00:aa:bb:01:",
            "5254:00aa:bb01:",
        ] {
            assert!(s.parse::<Mac>().is_err(), "{s:?} should be rejected");
        }
        assert!(matches!(
            "01:00:5e:00:00:01".parse::<Mac>(),
            Err(MacError::Multicast(_))
        ));
        assert!(matches!(
            "00:00:00:00:00:00".parse::<Mac>(),
            Err(MacError::Zero(_))
        ));
    }

    #[test]
    fn cidr_math() {
        let c: Ipv4Cidr = "192.168.7.130/25".parse().unwrap();
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 255, 128));
        assert_eq!(c.network(), Ipv4Addr::new(192, 168, 7, 128));
        assert_eq!(c.broadcast(), Ipv4Addr::new(192, 168, 7, 255));
        assert!(c.contains(Ipv4Addr::new(192, 168, 7, 200)));
        assert!(!c.contains(Ipv4Addr::new(192, 168, 7, 100)));
        assert!("10.0.0.1/33".parse::<Ipv4Cidr>().is_err());
        assert!("10.0.0.1".parse::<Ipv4Cidr>().is_err());
    }

    #[test]
    fn roles_round_trip_and_reject_unknown() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), *r);
        }
        assert!("master".parse::<Role>().is_err());
    }

    #[test]
    fn hostnames() {
        assert!(validate_hostname("cp-1").is_ok());
        assert!(validate_hostname("CP1").is_err());
        assert!(validate_hostname("-a").is_err());
        assert!(validate_hostname("a.b").is_err());
        assert!(validate_hostname("").is_err());
    }
}
