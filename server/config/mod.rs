//! Layered configuration: built-in defaults, then a TOML file, then `BOOTPLANE_*` environment
//! variables, then command-line flags, validated into `Config`.
//!
//! `args` is the command line and environment (clap), `file` the TOML file's schema (unknown
//! keys rejected), `load` the layering and validation into `Config`, `defaults` the named
//! defaults, `values` the value types settings share. This file holds the validated
//! `Config` and its sections.

mod args;
mod defaults;
pub(crate) mod file;
mod load;
mod values;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::model::{EfiBinary, Ipv4Cidr};
use crate::net::{self, InterfaceInfo};

pub use args::ServeOptions;
pub use defaults::*;
pub use file::{read_file, FileOptions};
pub use values::{
    validate_talos_version, ConfigAccess, DhcpMode, EfiBinaryArg, LogFormat, Pool, PortSetting,
    RaMode, Secret,
};

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
    /// Milliseconds per second of a boot step's time limit before the boot timeline flags a
    /// machine: 1000 (tests built with `testkit` may shorten it).
    pub step_limit_ms_per_second: i64,
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
    /// Threads of the async runtime `serve` runs on.
    pub worker_threads: usize,
}

impl Config {
    /// What this configuration will do that an operator would not guess, said once at start.
    pub fn startup_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.dhcp.mode == DhcpMode::Full && self.dhcp.router.is_none() {
            warnings.push(format!(
                "full DHCP hands out no router: {} has no default route and no --dhcp-router was given, so machines without their own --gateway get none (pass --dhcp-router if the LAN has one)",
                self.interface.name
            ));
        }
        if self.dhcp.mode == DhcpMode::Full && self.dhcp.pool.is_none() {
            warnings.push(
                "full DHCP without --dhcp-pool: machines not in the inventory get no address, so they cannot network-boot to be discovered".into(),
            );
        }
        warnings
    }

    /// The `bootplane images add` command that fetches a version's release assets into the
    /// database and images directory this `serve` uses (as absolute paths, so it runs from any
    /// directory; the release URL when not the default), quoted for a shell, for start-up hints.
    pub fn images_add_command(&self, version: &str, arch: &str) -> String {
        fn quoted(text: &str) -> String {
            if text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._-+:@,=".contains(c))
            {
                text.to_string()
            } else {
                format!("'{}'", text.replace('\'', r"'\''"))
            }
        }
        fn absolute(path: &std::path::Path) -> String {
            std::path::absolute(path)
                .unwrap_or_else(|_| path.to_path_buf())
                .display()
                .to_string()
        }
        let mut command = format!(
            "bootplane images add --version {} --arch {} --release",
            quoted(version),
            quoted(arch)
        );
        if self.sources.release_url != DEFAULT_RELEASE_URL {
            command += &format!(" --release-url {}", quoted(&self.sources.release_url));
        }
        command += &format!(" --data-dir {}", quoted(&absolute(&self.data_dir)));
        command += &format!(" --images-dir {}", quoted(&absolute(&self.boot.images_dir)));
        command
    }
}

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
    /// Test hook (built only with the `testkit` feature): exit the process right after the
    /// Bootstrap call is marked, before it is sent.
    #[cfg(feature = "testkit")]
    pub crash_before_bootstrap_call: bool,
}

impl Default for OrchestratorSettings {
    fn default() -> Self {
        OrchestratorSettings {
            api_port: DEFAULT_TALOS_API_PORT,
            bootstrap_holdoff: DEFAULT_BOOTSTRAP_HOLDOFF,
            probe_max_backoff: DEFAULT_PROBE_MAX_BACKOFF,
            wipe_window: DEFAULT_WIPE_WINDOW,
            wipe_confirm: DEFAULT_WIPE_CONFIRM,
            etcd_lost_confirm: DEFAULT_ETCD_LOST_CONFIRM,
            tick: DEFAULT_ORCHESTRATOR_TICK,
            max_probes: DEFAULT_MAX_PROBES,
            #[cfg(feature = "testkit")]
            crash_before_bootstrap_call: false,
        }
    }
}
