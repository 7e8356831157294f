//! The command line of `serve` and its `BOOTPLANE_*` environment variables (clap).

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use super::values::{
    ConfigAccess, DhcpMode, EfiBinaryArg, LogFormat, Pool, PortSetting, RaMode, Secret,
};
use crate::model::Ipv4Cidr;

/// Calls `$then!` with the name of every option: the one list the layers are merged by
/// (`ServeOptions::over`, `From<FileOptions>`); the compiler checks it names every field of
/// `ServeOptions` and of `FileOptions`, so the file and the command line take the same options.
macro_rules! option_names {
    ($then:ident) => {
        $then!(
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
            worker_threads,
            admin_password,
            secure_cookies
        )
    };
}
pub(super) use option_names;

/// Everything `serve` accepts on its command line and from `BOOTPLANE_*` environment
/// variables, each optional so layers can be merged (the file's layer is `FileOptions`).
#[derive(Clone, Debug, Default, clap::Args)]
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
    /// Threads of the runtime serving HTTP, TFTP and the background work (DHCP has a thread of its own) [default: half the CPUs, at least 1]
    #[arg(long, env = "BOOTPLANE_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// Password of the web UI's admin account: set on first start, and reset to this when it differs [default: generated on first start and printed once in the log]
    #[arg(long, env = "BOOTPLANE_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<Secret>,
    /// Mark session cookies Secure (set this when the UI is reached through an HTTPS reverse proxy) [default: false]
    #[arg(long, env = "BOOTPLANE_SECURE_COOKIES")]
    pub secure_cookies: Option<bool>,
}

impl ServeOptions {
    /// `self` wins over `lower` field by field.
    pub fn over(self, lower: ServeOptions) -> ServeOptions {
        macro_rules! pick {
            ($($f:ident),+) => { ServeOptions { $($f: self.$f.or(lower.$f)),+ } };
        }
        option_names!(pick)
    }
}
