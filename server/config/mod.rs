//! Layered configuration: built-in defaults, then a TOML file, then `BOOTPLANE_*` environment
//! variables, then command-line flags. Flags and environment are parsed by clap (`cli`); this
//! module merges them with the file and validates the result into `Config`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::model::{EfiBinary, Ipv4Cidr};
use crate::net::{self, InterfaceInfo};

pub const DEFAULT_DATA_DIR: &str = "./data";
pub const DEFAULT_HTTP_PORT: u16 = 8080;
pub const DEFAULT_HTTPS_PORT: u16 = 8443;
pub const DEFAULT_TFTP_PORT: u16 = 69;
pub const DEFAULT_DHCP_PORT: u16 = 67;
pub const DEFAULT_PXE_PORT: u16 = 4011;
pub const DEFAULT_IPXE_DIR: &str = "/usr/lib/ipxe";
pub const DEFAULT_IMAGES_DIR: &str = "./images";
pub const DEFAULT_TALOS_VERSION: &str = "v1.13.9";
pub const DEFAULT_LEASE_SECS: u32 = 3600;
pub const DEFAULT_ARM64_BINARY: &str = "ipxe-arm64.efi";
pub const DEFAULT_RETRY_SECS: u32 = 10;
pub const DEFAULT_TFTP_BLOCK_LIMIT: u16 = 1468;
pub const DEFAULT_TFTP_WINDOW_LIMIT: u16 = 16;
/// Talos's event sink (`talos.events.sink=`), next to the kernel log port Talos's own
/// documentation uses.
pub const DEFAULT_EVENTS_PORT: u16 = 4002;
/// Kernel log receiver (`talos.logging.kernel=tcp://…`), the port Talos's docs use.
pub const DEFAULT_KERNEL_LOG_PORT: u16 = 4001;
/// Kernel log lines kept per machine; older lines are trimmed.
pub const DEFAULT_BOOT_LOG_LINES: u32 = 5000;
/// HTTP connections open at once, in all (keep it below the process's file descriptor limit).
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 512;
/// HTTP connections open at once from one client address.
pub const DEFAULT_HTTP_MAX_CONNECTIONS_PER_ADDRESS: usize = 64;
/// Seconds a client has to send a whole request head (also how long a kept-alive connection
/// may wait for its next request).
pub const DEFAULT_HTTP_HEADER_TIMEOUT_SECS: u64 = 10;
/// Seconds an HTTP connection may go without a byte read or written in the middle of a
/// request (a stalled body, a response nobody reads).
pub const DEFAULT_HTTP_IDLE_TIMEOUT_SECS: u64 = 60;
/// The config file read from the data directory when `--config` is not given.
pub const DATA_DIR_CONFIG: &str = "bootplane.toml";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DhcpMode {
    /// Answer only netboot clients, beside the site's DHCP server (no addresses handed out).
    Proxy,
    /// Be the segment's DHCP server: static addresses for known machines, an optional pool.
    Full,
    /// No DHCP at all (the site's DHCP server points machines at bootplane).
    Off,
}

impl fmt::Display for DhcpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DhcpMode::Proxy => "proxy",
            DhcpMode::Full => "full",
            DhcpMode::Off => "off",
        })
    }
}

/// Who may fetch a machine's config (it carries every cluster secret).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ConfigAccess {
    /// Only a requester whose address bootplane leased to that MAC, or whose entry in the
    /// host's neighbour (ARP) table is that MAC.
    Mac,
    /// Anyone who can reach the HTTP port and knows the MAC.
    Any,
    /// Only a bearer token bootplane issued for that machine through the OAuth2 device flow
    /// Talos speaks (`talos.config.oauth.*`): an operator approves the code the machine shows,
    /// or an armed window approves one install. Rests on nothing the LAN says.
    Oauth,
}

/// Whether to answer IPv6 router solicitations (see `ra`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RaMode {
    /// On in full DHCP mode, off otherwise.
    Auto,
    On,
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A TCP port, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortSetting {
    Off,
    Port(u16),
}

impl PortSetting {
    pub fn port(self) -> Option<u16> {
        match self {
            PortSetting::Off => None,
            PortSetting::Port(p) => Some(p),
        }
    }
}

impl FromStr for PortSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "off" => Ok(PortSetting::Off),
            text => match text.parse::<u16>() {
                Ok(0) | Err(_) => Err(format!("'{s}' is neither a port (1-65535) nor 'off'")),
                Ok(p) => Ok(PortSetting::Port(p)),
            },
        }
    }
}

impl<'de> Deserialize<'de> for PortSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Number(n) => n.to_string(),
            Raw::Text(t) => t,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A `START-END` range of IPv4 addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
}

impl Pool {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (u32::from(self.start)..=u32::from(self.end)).contains(&u32::from(ip))
    }

    pub fn len(&self) -> u32 {
        u32::from(self.end) - u32::from(self.start) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

impl FromStr for Pool {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("'{s}' is not a range like 192.168.1.100-192.168.1.199"))?;
        let start: Ipv4Addr = a
            .trim()
            .parse()
            .map_err(|_| format!("'{a}' is not an IPv4 address"))?;
        let end: Ipv4Addr = b
            .trim()
            .parse()
            .map_err(|_| format!("'{b}' is not an IPv4 address"))?;
        if u32::from(end) < u32::from(start) {
            return Err(format!("pool '{s}' ends before it starts"));
        }
        Ok(Pool { start, end })
    }
}

impl<'de> Deserialize<'de> for Pool {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Everything `serve` accepts, each optional so layers can be merged. The TOML file uses the
/// same names with underscores (`http_port = 8080`).
#[derive(Clone, Debug, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ServeOptions {
    /// Where the SQLite database (and the config file bootplane.toml, if any) live [default: ./data]
    #[arg(long, env = "BOOTPLANE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// LAN interface to serve on [default: the interface holding the default route]
    #[arg(long, env = "BOOTPLANE_INTERFACE")]
    pub interface: Option<String>,
    /// Address machines use to reach bootplane [default: the interface's first IPv4 address]
    #[arg(long, env = "BOOTPLANE_ADVERTISE_IP")]
    pub advertise_ip: Option<Ipv4Addr>,
    /// Address the HTTP server binds [default: 0.0.0.0]
    #[arg(long, env = "BOOTPLANE_HTTP_BIND")]
    pub http_bind: Option<IpAddr>,
    /// HTTP port for iPXE scripts, boot assets, configs, metrics [default: 8080]
    #[arg(long, env = "BOOTPLANE_HTTP_PORT")]
    pub http_port: Option<u16>,
    /// HTTPS port for the web UI and the API (boot routes stay on HTTP), or off [default: 8443]
    #[arg(long, env = "BOOTPLANE_HTTPS_PORT")]
    pub https_port: Option<PortSetting>,
    /// PEM certificate chain for HTTPS (with --tls-key) [default: a self-signed one generated on first start in <data-dir>/tls/]
    #[arg(long, env = "BOOTPLANE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert
    #[arg(long, env = "BOOTPLANE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// HTTP connections open at once, in all; more are closed at once [default: 512]
    #[arg(long, env = "BOOTPLANE_HTTP_MAX_CONNECTIONS")]
    pub http_max_connections: Option<usize>,
    /// HTTP connections open at once from one client address; more are closed at once [default: 64]
    #[arg(long, env = "BOOTPLANE_HTTP_MAX_CONNECTIONS_PER_ADDRESS")]
    pub http_max_connections_per_address: Option<usize>,
    /// Seconds a client has to send a request head, and a kept-alive connection to start its next request [default: 10]
    #[arg(long, env = "BOOTPLANE_HTTP_HEADER_TIMEOUT")]
    pub http_header_timeout: Option<u64>,
    /// Seconds an HTTP connection may go without a byte read or written mid-request [default: 60]
    #[arg(long, env = "BOOTPLANE_HTTP_IDLE_TIMEOUT")]
    pub http_idle_timeout: Option<u64>,
    /// TFTP port [default: 69]
    #[arg(long, env = "BOOTPLANE_TFTP_PORT")]
    pub tftp_port: Option<u16>,
    /// Largest TFTP block size granted [default: 1468]
    #[arg(long, env = "BOOTPLANE_TFTP_BLOCK_LIMIT")]
    pub tftp_block_limit: Option<u16>,
    /// Largest TFTP window size granted (RFC 7440) [default: 16]
    #[arg(long, env = "BOOTPLANE_TFTP_WINDOW_LIMIT")]
    pub tftp_window_limit: Option<u16>,
    /// proxy: answer PXE clients beside the site DHCP server; full: be the DHCP server; off [default: proxy]
    #[arg(long, env = "BOOTPLANE_DHCP_MODE", value_enum)]
    pub dhcp_mode: Option<DhcpMode>,
    /// DHCP server port [default: 67]
    #[arg(long, env = "BOOTPLANE_DHCP_PORT")]
    pub dhcp_port: Option<u16>,
    /// PXE boot-server (proxyDHCP request) port [default: 4011]
    #[arg(long, env = "BOOTPLANE_PXE_PORT")]
    pub pxe_port: Option<u16>,
    /// Full mode: the subnet served, as ADDR/PREFIX [default: the interface's subnet]
    #[arg(long, env = "BOOTPLANE_DHCP_SUBNET")]
    pub dhcp_subnet: Option<Ipv4Cidr>,
    /// Full mode: dynamic pool START-END for machines not in the inventory [default: none]
    #[arg(long, env = "BOOTPLANE_DHCP_POOL")]
    pub dhcp_pool: Option<Pool>,
    /// Full mode: default router handed out [default: the host's default gateway on the interface]
    #[arg(long, env = "BOOTPLANE_DHCP_ROUTER")]
    pub dhcp_router: Option<Ipv4Addr>,
    /// Full mode: DNS servers handed out (repeat or comma-separate) [default: none]
    #[arg(long, env = "BOOTPLANE_DHCP_DNS", value_delimiter = ',')]
    pub dhcp_dns: Option<Vec<Ipv4Addr>>,
    /// Full mode: lease time in seconds [default: 3600]
    #[arg(long, env = "BOOTPLANE_DHCP_LEASE_TIME")]
    pub dhcp_lease_time: Option<u32>,
    /// Answer IPv6 router solicitations with an empty advertisement so iPXE does not wait 16 s for IPv6: auto (on in full mode), on, off [default: auto]
    #[arg(long, env = "BOOTPLANE_IPV6_RA", value_enum)]
    pub ipv6_ra: Option<RaMode>,
    /// Directory holding the iPXE binaries served over TFTP [default: /usr/lib/ipxe]
    #[arg(long, env = "BOOTPLANE_IPXE_DIR")]
    pub ipxe_dir: Option<PathBuf>,
    /// iPXE build for x86-64 UEFI: ipxe.efi or snponly.efi (per machine override exists) [default: ipxe.efi]
    #[arg(long, env = "BOOTPLANE_EFI_BINARY")]
    pub efi_binary: Option<EfiBinaryArg>,
    /// File name of the arm64 UEFI iPXE build in the iPXE directory [default: ipxe-arm64.efi]
    #[arg(long, env = "BOOTPLANE_ARM64_BINARY")]
    pub arm64_binary: Option<String>,
    /// Directory of boot assets: <images-dir>/<talos-version>/vmlinuz-<arch> and initramfs-<arch>.xz [default: ./images]
    #[arg(long, env = "BOOTPLANE_IMAGES_DIR")]
    pub images_dir: Option<PathBuf>,
    /// Image Factory base URL for assets added from the web UI and API (an air-gapped mirror) [default: https://factory.talos.dev]
    #[arg(long, env = "BOOTPLANE_FACTORY_URL")]
    pub factory_url: Option<String>,
    /// Base URL of Talos release assets, <url>/<version>/vmlinuz-<arch>, for the web UI and API [default: GitHub releases]
    #[arg(long, env = "BOOTPLANE_RELEASE_URL")]
    pub release_url: Option<String>,
    /// Talos version booted by machines whose cluster has no version and that pin none (selects assets and kernel arguments) [default: v1.13.9]
    #[arg(long, env = "BOOTPLANE_TALOS_VERSION")]
    pub talos_version: Option<String>,
    /// Extra kernel arguments appended for every machine (space-separated)
    #[arg(long, env = "BOOTPLANE_KERNEL_ARGS")]
    pub kernel_args: Option<String>,
    /// Seconds an unassigned machine waits before asking again [default: 10]
    #[arg(long, env = "BOOTPLANE_RETRY_SECS")]
    pub retry_secs: Option<u32>,
    /// Who may fetch /config: mac (the requester must be that machine, by ARP entry or bootplane's own DHCP lease), oauth (a token from the OAuth2 device flow, approved by an operator) or any [default: mac]
    #[arg(long, env = "BOOTPLANE_CONFIG_ACCESS", value_enum)]
    pub config_access: Option<ConfigAccess>,
    /// Port of the Talos API on the nodes, probed for report-in [default: 50000]
    #[arg(long, env = "BOOTPLANE_TALOS_API_PORT")]
    pub talos_api_port: Option<u16>,
    /// Seconds after a Bootstrap call with an unknown outcome before it may be repeated (same node only) [default: 300]
    #[arg(long, env = "BOOTPLANE_BOOTSTRAP_HOLDOFF")]
    pub bootstrap_holdoff: Option<u64>,
    /// Seconds: an installed machine that network-boots again this soon after being sent to its disk may be reinstalled (see --wipe-confirm) [default: 600]
    #[arg(long, env = "BOOTPLANE_WIPE_WINDOW")]
    pub wipe_window: Option<u64>,
    /// Seconds the Talos API of a machine sent to its disk must fail the cluster's mTLS on every probe before its next network boot counts as a wipe (a network boot alone never does) [default: 30]
    #[arg(long, env = "BOOTPLANE_WIPE_CONFIRM")]
    pub wipe_confirm: Option<u64>,
    /// Seconds every control plane of a bootstrapped cluster must be seen reinstalled and without a running etcd before its etcd counts as lost and is bootstrapped again [default: 30]
    #[arg(long, env = "BOOTPLANE_ETCD_LOST_CONFIRM")]
    pub etcd_lost_confirm: Option<u64>,
    /// Port receiving Talos's events (talos.events.sink= on the kernel command line; each one triggers a report-in probe), or off [default: 4002]
    #[arg(long, env = "BOOTPLANE_EVENTS_PORT")]
    pub events_port: Option<PortSetting>,
    /// Port receiving Talos's kernel logs as JSON lines over TCP (talos.logging.kernel=), or off [default: 4001]
    #[arg(long, env = "BOOTPLANE_KERNEL_LOG_PORT")]
    pub kernel_log_port: Option<PortSetting>,
    /// Kernel log lines kept per machine (older ones are trimmed) [default: 5000]
    #[arg(long, env = "BOOTPLANE_BOOT_LOG_LINES")]
    pub boot_log_lines: Option<u32>,
    /// Log format: text or json [default: text]
    #[arg(long, env = "BOOTPLANE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Password of the web UI's admin account: set on first start, and reset to this when it differs [default: generated on first start and printed once in the log]
    #[arg(long, env = "BOOTPLANE_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<Secret>,
    /// Mark session cookies Secure (set this when the UI is reached through an HTTPS reverse proxy) [default: false]
    #[arg(long, env = "BOOTPLANE_SECURE_COOKIES")]
    pub secure_cookies: Option<bool>,
}

/// A secret setting: kept out of `Debug` output and logs.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(Secret(s.to_string()))
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// `EfiBinary` as a clap/serde value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EfiBinaryArg(pub EfiBinary);

impl FromStr for EfiBinaryArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse().map(EfiBinaryArg)
    }
}

impl<'de> Deserialize<'de> for EfiBinaryArg {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        EfiBinary::deserialize(d).map(EfiBinaryArg)
    }
}

impl ServeOptions {
    /// `self` wins over `lower` field by field.
    pub fn over(self, lower: ServeOptions) -> ServeOptions {
        macro_rules! pick {
            ($($f:ident),+) => { ServeOptions { $($f: self.$f.or(lower.$f)),+ } };
        }
        pick!(
            data_dir,
            interface,
            advertise_ip,
            http_bind,
            http_port,
            https_port,
            tls_cert,
            tls_key,
            http_max_connections,
            http_max_connections_per_address,
            http_header_timeout,
            http_idle_timeout,
            tftp_port,
            tftp_block_limit,
            tftp_window_limit,
            dhcp_mode,
            dhcp_port,
            pxe_port,
            dhcp_subnet,
            dhcp_pool,
            dhcp_router,
            dhcp_dns,
            dhcp_lease_time,
            ipv6_ra,
            ipxe_dir,
            efi_binary,
            arm64_binary,
            images_dir,
            factory_url,
            release_url,
            talos_version,
            kernel_args,
            retry_secs,
            config_access,
            talos_api_port,
            bootstrap_holdoff,
            wipe_window,
            wipe_confirm,
            etcd_lost_confirm,
            events_port,
            kernel_log_port,
            boot_log_lines,
            log_format,
            admin_password,
            secure_cookies
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(transparent)]
    Net(#[from] net::NetError),
    #[error("{0}")]
    Invalid(String),
}

pub fn read_file(path: &Path) -> Result<ServeOptions, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[derive(Clone, Debug, PartialEq)]
pub struct DhcpConfig {
    pub mode: DhcpMode,
    pub port: u16,
    pub pxe_port: u16,
    /// Full mode: the subnet served.
    pub subnet: Ipv4Cidr,
    pub pool: Option<Pool>,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub lease_secs: u32,
    /// Answer IPv6 router solicitations (resolved from `RaMode`).
    pub router_advertisements: bool,
    /// The operator asked for router advertisements explicitly: failing to open them is fatal.
    pub router_advertisements_required: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BootConfig {
    pub advertise_ip: Ipv4Addr,
    pub http_port: u16,
    pub ipxe_dir: PathBuf,
    pub efi_binary: EfiBinary,
    pub arm64_binary: String,
    pub images_dir: PathBuf,
    pub talos_version: String,
    pub extra_kernel_args: Vec<String>,
    pub retry_secs: u32,
    pub tftp_block_limit: u16,
    pub tftp_window_limit: u16,
    pub config_access: ConfigAccess,
    /// Talos's event sink port, told to nodes on the kernel command line; `None` when off.
    pub events_port: Option<u16>,
    /// Kernel log receiver port, told to nodes on the kernel command line; `None` when off.
    pub kernel_log_port: Option<u16>,
    /// Kernel log lines kept per machine.
    pub boot_log_lines: u32,
}

impl BootConfig {
    /// `http://<advertise-ip>:<port>`, the prefix of every URL handed to machines.
    pub fn http_base(&self) -> String {
        if self.http_port == 80 {
            format!("http://{}", self.advertise_ip)
        } else {
            format!("http://{}:{}", self.advertise_ip, self.http_port)
        }
    }

    /// What this appliance adds to every install command line: the config URL's prefix, the
    /// report-in arguments, the OAuth arguments under `--config-access oauth`, the operator's
    /// `--kernel-args`.
    pub fn kernel_additions(&self) -> crate::talos::kernel::Additions {
        use crate::talos::kernel;
        kernel::Additions {
            http_base: self.http_base(),
            report: kernel::report_args(&self.report_targets()),
            oauth: if self.config_access == ConfigAccess::Oauth {
                kernel::oauth_args()
            } else {
                Vec::new()
            },
            operator: self.extra_kernel_args.clone(),
        }
    }

    /// The URL iPXE is sent to first.
    pub fn script_url(&self) -> String {
        format!("{}/boot.ipxe", self.http_base())
    }

    /// Where nodes push their events and kernel log (see `talos::kernel::report_targets`).
    pub fn report_targets(&self) -> crate::model::ReportTargets {
        crate::talos::kernel::report_targets(
            self.advertise_ip,
            self.events_port,
            self.kernel_log_port,
            &self.extra_kernel_args,
        )
    }
}

/// Where boot assets are fetched from when the web UI or the API adds them.
#[derive(Clone, Debug, PartialEq)]
pub struct AssetSources {
    pub factory_url: String,
    pub release_url: String,
}

/// Web UI and API settings.
#[derive(Clone, Debug, Default)]
pub struct UiConfig {
    pub admin_password: Option<Secret>,
    pub secure_cookies: bool,
}

/// Where the HTTPS certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsCert {
    /// The operator's PEM files: the certificate chain and its private key.
    Files { cert: PathBuf, key: PathBuf },
    /// Made on first start in `dir` (`<data-dir>/tls/`), for these addresses and names.
    Generated {
        dir: PathBuf,
        ips: Vec<IpAddr>,
        names: Vec<String>,
    },
}

/// The HTTPS listener for the web UI and the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpsConfig {
    pub bind: SocketAddr,
    pub cert: TlsCert,
}

/// Bounds of the HTTP listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    pub header_timeout: std::time::Duration,
    pub idle_timeout: std::time::Duration,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            max_connections: DEFAULT_HTTP_MAX_CONNECTIONS,
            max_connections_per_address: DEFAULT_HTTP_MAX_CONNECTIONS_PER_ADDRESS,
            header_timeout: std::time::Duration::from_secs(DEFAULT_HTTP_HEADER_TIMEOUT_SECS),
            idle_timeout: std::time::Duration::from_secs(DEFAULT_HTTP_IDLE_TIMEOUT_SECS),
        }
    }
}

/// The validated configuration `serve` runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub ui: UiConfig,
    pub sources: AssetSources,
    pub interface: InterfaceInfo,
    pub http_bind: SocketAddr,
    pub http: HttpLimits,
    /// `None` with `--https-port off`.
    pub https: Option<HttpsConfig>,
    pub tftp_port: u16,
    pub dhcp: DhcpConfig,
    pub boot: BootConfig,
    pub orchestrator: OrchestratorSettings,
    pub log_format: LogFormat,
}

/// A Talos version as `vX.Y.Z`; rejects anything that could escape a directory.
pub fn validate_talos_version(v: &str) -> Result<(), String> {
    let rest = v
        .strip_prefix('v')
        .ok_or_else(|| format!("Talos version '{v}' must look like v1.11.6"))?;
    let (core, pre) = match rest.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (rest, None),
    };
    let parts: Vec<&str> = core.split('.').collect();
    let numeric = parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
    let pre_ok = pre
        .is_none_or(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '.'));
    if numeric && pre_ok {
        Ok(())
    } else {
        Err(format!("Talos version '{v}' must look like v1.11.6"))
    }
}

impl Config {
    /// Merges the layers (flags/env in `cli`, the file named by `config_file` or found in the
    /// data directory) and resolves the interface.
    pub fn load(cli: ServeOptions, config_file: Option<&Path>) -> Result<Config, ConfigError> {
        let data_dir_hint = cli
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let file = match config_file {
            Some(path) => read_file(path)?,
            None => {
                let path = data_dir_hint.join(DATA_DIR_CONFIG);
                if path.exists() {
                    read_file(&path)?
                } else {
                    ServeOptions::default()
                }
            }
        };
        let merged = cli.over(file);
        let interface = net::interface(merged.interface.as_deref())?;
        Config::resolve(merged, interface)
    }

    /// Applies defaults and validation, given the already-looked-up interface.
    pub fn resolve(o: ServeOptions, interface: InterfaceInfo) -> Result<Config, ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(m);
        let advertise_ip = o.advertise_ip.unwrap_or(interface.cidr.addr);
        let mode = o.dhcp_mode.unwrap_or(DhcpMode::Proxy);
        let subnet = o.dhcp_subnet.unwrap_or(interface.cidr);
        let subnet = Ipv4Cidr::new(subnet.network(), subnet.prefix).map_err(invalid)?;
        if let Some(pool) = o.dhcp_pool {
            if !subnet.contains(pool.start) || !subnet.contains(pool.end) {
                return Err(invalid(format!(
                    "--dhcp-pool {}-{} is not inside --dhcp-subnet {subnet}",
                    pool.start, pool.end
                )));
            }
            if pool.contains(advertise_ip) {
                return Err(invalid(format!(
                    "--dhcp-pool {}-{} contains bootplane's own address {advertise_ip}",
                    pool.start, pool.end
                )));
            }
        }
        if mode == DhcpMode::Full && !subnet.contains(advertise_ip) {
            return Err(invalid(format!(
                "full DHCP mode serves {subnet}, but the advertised address {advertise_ip} is outside it: \
                 pass --dhcp-subnet or --interface"
            )));
        }
        let talos_version = o
            .talos_version
            .unwrap_or_else(|| DEFAULT_TALOS_VERSION.to_string());
        validate_talos_version(&talos_version).map_err(invalid)?;
        let arm64_binary = o
            .arm64_binary
            .unwrap_or_else(|| DEFAULT_ARM64_BINARY.to_string());
        if arm64_binary.contains('/') || arm64_binary.starts_with('.') {
            return Err(invalid(format!(
                "--arm64-binary '{arm64_binary}' must be a plain file name"
            )));
        }
        let lease_secs = o.dhcp_lease_time.unwrap_or(DEFAULT_LEASE_SECS);
        if lease_secs < 60 {
            return Err(invalid(
                "--dhcp-lease-time must be at least 60 seconds".into(),
            ));
        }
        let block = o.tftp_block_limit.unwrap_or(DEFAULT_TFTP_BLOCK_LIMIT);
        if !(512..=65464).contains(&block) {
            return Err(invalid("--tftp-block-limit must be 512 to 65464".into()));
        }
        let window = o.tftp_window_limit.unwrap_or(DEFAULT_TFTP_WINDOW_LIMIT);
        if window == 0 {
            return Err(invalid("--tftp-window-limit must be at least 1".into()));
        }
        let http_port = o.http_port.unwrap_or(DEFAULT_HTTP_PORT);
        let http = HttpLimits {
            max_connections: o
                .http_max_connections
                .unwrap_or(DEFAULT_HTTP_MAX_CONNECTIONS),
            max_connections_per_address: o
                .http_max_connections_per_address
                .unwrap_or(DEFAULT_HTTP_MAX_CONNECTIONS_PER_ADDRESS),
            header_timeout: std::time::Duration::from_secs(
                o.http_header_timeout
                    .unwrap_or(DEFAULT_HTTP_HEADER_TIMEOUT_SECS),
            ),
            idle_timeout: std::time::Duration::from_secs(
                o.http_idle_timeout
                    .unwrap_or(DEFAULT_HTTP_IDLE_TIMEOUT_SECS),
            ),
        };
        if http.max_connections_per_address == 0
            || http.max_connections_per_address > http.max_connections
        {
            return Err(invalid(
                "--http-max-connections-per-address must be 1 to --http-max-connections".into(),
            ));
        }
        if http.header_timeout.is_zero() || http.idle_timeout.is_zero() {
            return Err(invalid(
                "--http-header-timeout and --http-idle-timeout must be at least 1 second".into(),
            ));
        }
        let data_dir = o
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let bind_ip = o.http_bind.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let https = match o
            .https_port
            .unwrap_or(PortSetting::Port(DEFAULT_HTTPS_PORT))
            .port()
        {
            None => None,
            Some(port) => {
                let cert = match (o.tls_cert.clone(), o.tls_key.clone()) {
                    (Some(cert), Some(key)) => TlsCert::Files { cert, key },
                    (None, None) => {
                        let mut ips = std::collections::BTreeSet::from([
                            IpAddr::V4(advertise_ip),
                            IpAddr::V4(interface.cidr.addr),
                            IpAddr::V4(Ipv4Addr::LOCALHOST),
                        ]);
                        if !bind_ip.is_unspecified() {
                            ips.insert(bind_ip);
                        }
                        let mut names = vec!["bootplane".to_string(), "localhost".to_string()];
                        if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
                            let host = host.trim();
                            if !host.is_empty() && !names.iter().any(|n| n == host) {
                                names.push(host.to_string());
                            }
                        }
                        TlsCert::Generated {
                            dir: data_dir.join(TLS_GENERATED_DIR),
                            ips: ips.into_iter().collect(),
                            names,
                        }
                    }
                    _ => {
                        return Err(invalid(
                            "--tls-cert and --tls-key go together (give both, or neither for a generated certificate)".into(),
                        ))
                    }
                };
                if port == http_port {
                    return Err(invalid("--https-port must differ from --http-port".into()));
                }
                Some(HttpsConfig {
                    bind: SocketAddr::new(bind_ip, port),
                    cert,
                })
            }
        };
        let boot_log_lines = o.boot_log_lines.unwrap_or(DEFAULT_BOOT_LOG_LINES);
        if boot_log_lines == 0 {
            return Err(invalid("--boot-log-lines must be at least 1".into()));
        }
        if let Some(p) = &o.admin_password {
            if p.0.chars().count() < MIN_PASSWORD_LEN {
                return Err(invalid(format!(
                    "--admin-password must have at least {} characters",
                    MIN_PASSWORD_LEN
                )));
            }
        }
        let url = |flag: &str, value: Option<String>, default: &str| {
            let url = value.unwrap_or_else(|| default.to_string());
            if url.starts_with("http://") || url.starts_with("https://") {
                Ok(url.trim_end_matches('/').to_string())
            } else {
                Err(invalid(format!(
                    "--{flag} '{url}' must be an http:// or https:// URL"
                )))
            }
        };
        let sources = AssetSources {
            factory_url: url("factory-url", o.factory_url.clone(), DEFAULT_FACTORY_URL)?,
            release_url: url("release-url", o.release_url.clone(), DEFAULT_RELEASE_URL)?,
        };
        let config = Config {
            sources,
            ui: UiConfig {
                admin_password: o.admin_password.clone(),
                secure_cookies: o.secure_cookies.unwrap_or(false),
            },
            data_dir,
            http_bind: SocketAddr::new(bind_ip, http_port),
            http,
            https,
            tftp_port: o.tftp_port.unwrap_or(DEFAULT_TFTP_PORT),
            dhcp: DhcpConfig {
                mode,
                port: o.dhcp_port.unwrap_or(DEFAULT_DHCP_PORT),
                pxe_port: o.pxe_port.unwrap_or(DEFAULT_PXE_PORT),
                subnet,
                pool: o.dhcp_pool,
                router: o.dhcp_router.or(interface.gateway),
                dns: o.dhcp_dns.unwrap_or_default(),
                lease_secs,
                router_advertisements: match o.ipv6_ra.unwrap_or(RaMode::Auto) {
                    RaMode::Auto => mode == DhcpMode::Full,
                    RaMode::On => true,
                    RaMode::Off => false,
                },
                router_advertisements_required: o.ipv6_ra == Some(RaMode::On),
            },
            boot: BootConfig {
                advertise_ip,
                http_port,
                ipxe_dir: o
                    .ipxe_dir
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_IPXE_DIR)),
                efi_binary: o.efi_binary.map(|e| e.0).unwrap_or(EfiBinary::IpxeEfi),
                arm64_binary,
                images_dir: o
                    .images_dir
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_IMAGES_DIR)),
                talos_version,
                extra_kernel_args: o
                    .kernel_args
                    .map(|a| a.split_whitespace().map(str::to_string).collect())
                    .unwrap_or_default(),
                retry_secs: o.retry_secs.unwrap_or(DEFAULT_RETRY_SECS),
                tftp_block_limit: block,
                tftp_window_limit: window,
                config_access: o.config_access.unwrap_or(ConfigAccess::Mac),
                events_port: o
                    .events_port
                    .unwrap_or(PortSetting::Port(DEFAULT_EVENTS_PORT))
                    .port(),
                kernel_log_port: o
                    .kernel_log_port
                    .unwrap_or(PortSetting::Port(DEFAULT_KERNEL_LOG_PORT))
                    .port(),
                boot_log_lines,
            },
            interface,
            orchestrator: {
                let defaults = OrchestratorSettings::default();
                OrchestratorSettings {
                    api_port: o.talos_api_port.unwrap_or(defaults.api_port),
                    bootstrap_holdoff: o
                        .bootstrap_holdoff
                        .map(std::time::Duration::from_secs)
                        .unwrap_or(defaults.bootstrap_holdoff),
                    wipe_window: o
                        .wipe_window
                        .map(std::time::Duration::from_secs)
                        .unwrap_or(defaults.wipe_window),
                    wipe_confirm: o
                        .wipe_confirm
                        .map(std::time::Duration::from_secs)
                        .unwrap_or(defaults.wipe_confirm),
                    etcd_lost_confirm: o
                        .etcd_lost_confirm
                        .map(std::time::Duration::from_secs)
                        .unwrap_or(defaults.etcd_lost_confirm),
                    // Test hook for the crash-safety test; never set by configuration.
                    crash_before_bootstrap_call: std::env::var_os(
                        "BOOTPLANE_TEST_CRASH_BEFORE_BOOTSTRAP_CALL",
                    )
                    .is_some(),
                    ..defaults
                }
            },
            log_format: o.log_format.unwrap_or(LogFormat::Text),
        };
        // Operator arguments that leave no machine a command line Talos receives whole.
        config
            .boot
            .kernel_additions()
            .shortest(&[])
            .check()
            .map_err(|e| invalid(format!("--kernel-args: {e}")))?;
        Ok(config)
    }
}

pub const MIN_PASSWORD_LEN: usize = 12;

/// The public Image Factory; an air-gapped mirror is given with `--factory-url`.
pub const DEFAULT_FACTORY_URL: &str = "https://factory.talos.dev";
/// Where Talos releases publish `vmlinuz-<arch>` and `initramfs-<arch>.xz`.
pub const DEFAULT_RELEASE_URL: &str = "https://github.com/siderolabs/talos/releases/download";

/// Where the generated certificate and key live, under the data directory.
pub const TLS_GENERATED_DIR: &str = "tls";

/// Timings and limits; defaults suit real clusters, tests shorten them.
#[derive(Clone, Debug)]
pub struct OrchestratorSettings {
    /// Port of the Talos API on every node.
    pub api_port: u16,
    /// How long after a Bootstrap call whose outcome is unknown no other call is made.
    pub bootstrap_holdoff: Duration,
    /// Longest wait between two report-in probes of one machine.
    pub probe_max_backoff: Duration,
    /// A machine sent to its disk that network-boots again within this window, without its
    /// Talos API answering in between, may have a disk that does not boot.
    pub wipe_window: Duration,
    /// ...and it is reinstalled only once its Talos API has failed the cluster's mTLS on every
    /// probe for at least this long since the hand-off (and at least `orchestrator::WIPE_MIN_FAILED_PROBES`
    /// times). A network boot is an unauthenticated request: it never decides by itself.
    pub wipe_confirm: Duration,
    /// How long every control plane must be seen reinstalled since the bootstrap and without a
    /// running etcd before the cluster's etcd counts as lost (and a new generation starts).
    pub etcd_lost_confirm: Duration,
    /// How often clusters are re-evaluated without any signal.
    pub tick: Duration,
    /// Probes in flight at most.
    pub max_probes: usize,
    /// Test hook: exit the process right after the Bootstrap call is marked, before it is sent.
    pub crash_before_bootstrap_call: bool,
}

impl Default for OrchestratorSettings {
    fn default() -> Self {
        OrchestratorSettings {
            api_port: 50000,
            bootstrap_holdoff: Duration::from_secs(300),
            probe_max_backoff: Duration::from_secs(30),
            wipe_window: Duration::from_secs(600),
            wipe_confirm: Duration::from_secs(30),
            etcd_lost_confirm: Duration::from_secs(30),
            tick: Duration::from_secs(5),
            max_probes: 32,
            crash_before_bootstrap_call: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface() -> InterfaceInfo {
        InterfaceInfo {
            name: "br0".into(),
            index: 3,
            cidr: "10.77.0.1/24".parse().unwrap(),
            gateway: None,
        }
    }

    #[test]
    fn defaults_follow_the_interface() {
        let c = Config::resolve(ServeOptions::default(), iface()).unwrap();
        assert_eq!(c.boot.advertise_ip, Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(c.dhcp.mode, DhcpMode::Proxy);
        assert_eq!(c.dhcp.subnet.to_string(), "10.77.0.0/24");
        assert_eq!(c.http_bind.port(), 8080);
        assert_eq!(c.boot.script_url(), "http://10.77.0.1:8080/boot.ipxe");
        assert_eq!(c.data_dir, PathBuf::from("./data"));
    }

    #[test]
    fn flags_beat_file_and_file_beats_defaults() {
        let file: ServeOptions =
            toml::from_str("http_port = 9000\ndhcp_mode = \"full\"\ntalos_version = \"v1.10.9\"")
                .unwrap();
        let flags = ServeOptions {
            http_port: Some(9100),
            ..Default::default()
        };
        let c = Config::resolve(flags.over(file), iface()).unwrap();
        assert_eq!(c.http_bind.port(), 9100);
        assert_eq!(c.dhcp.mode, DhcpMode::Full);
        assert_eq!(c.boot.talos_version, "v1.10.9");
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        let err = toml::from_str::<ServeOptions>("http_prot = 1").unwrap_err();
        assert!(err.to_string().contains("http_prot"), "{err}");
    }

    #[test]
    fn bad_values_are_explained() {
        let bad_pool = ServeOptions {
            dhcp_pool: Some("10.77.1.10-10.77.1.20".parse().unwrap()),
            ..Default::default()
        };
        let err = Config::resolve(bad_pool, iface()).unwrap_err().to_string();
        assert!(err.contains("not inside"), "{err}");
        let bad_version = ServeOptions {
            talos_version: Some("../etc".into()),
            ..Default::default()
        };
        assert!(Config::resolve(bad_version, iface()).is_err());
        assert!("10.0.0.9-10.0.0.1".parse::<Pool>().is_err());
    }

    #[test]
    fn receiver_ports_default_on_and_turn_off() {
        let c = Config::resolve(ServeOptions::default(), iface()).unwrap();
        assert_eq!(c.boot.events_port, Some(DEFAULT_EVENTS_PORT));
        assert_eq!(c.boot.kernel_log_port, Some(DEFAULT_KERNEL_LOG_PORT));
        assert_eq!(c.boot.boot_log_lines, DEFAULT_BOOT_LOG_LINES);
        let file: ServeOptions =
            toml::from_str("events_port = \"off\"\nkernel_log_port = 5001").unwrap();
        let c = Config::resolve(file, iface()).unwrap();
        assert_eq!(c.boot.events_port, None);
        assert_eq!(c.boot.kernel_log_port, Some(5001));
        assert_eq!("off".parse::<PortSetting>(), Ok(PortSetting::Off));
        assert!("0".parse::<PortSetting>().is_err());
        assert!("70000".parse::<PortSetting>().is_err());
        assert!(toml::from_str::<ServeOptions>("events_port = 0").is_err());
        let zero = ServeOptions {
            boot_log_lines: Some(0),
            ..Default::default()
        };
        assert!(Config::resolve(zero, iface()).is_err());
    }

    #[test]
    fn talos_versions() {
        for ok in ["v1.11.6", "v1.12.0-beta.1", "v10.0.0"] {
            assert!(validate_talos_version(ok).is_ok(), "{ok}");
        }
        for bad in ["1.11.6", "v1.11", "v1.11.6/..", "v1..6", "v1.11.6-", ""] {
            assert!(validate_talos_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_default_talos_version_is_1_13_9_and_bootplane_renders_its_configs() {
        assert_eq!(DEFAULT_TALOS_VERSION, "v1.13.9");
        assert!(crate::talos::config::Contract::of(DEFAULT_TALOS_VERSION).is_ok());
        assert_eq!(
            crate::talos::config::default_kubernetes_version(DEFAULT_TALOS_VERSION),
            Some("1.36.3")
        );
    }
}
