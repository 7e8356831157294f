//! The layers merged (flags and environment over the file over the defaults) and validated
//! into `Config`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use super::*;

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
        let worker_threads = o.worker_threads.unwrap_or_else(default_worker_threads);
        if !(1..=MAX_WORKER_THREADS).contains(&worker_threads) {
            return Err(invalid(format!(
                "--worker-threads must be 1 to {MAX_WORKER_THREADS}"
            )));
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
                step_limit_ms_per_second: step_limit_ms_per_second(),
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
                    // Test hook for the crash-safety test, only in builds with the `testkit`
                    // feature; never set by configuration.
                    #[cfg(feature = "testkit")]
                    crash_before_bootstrap_call: std::env::var_os(
                        "BOOTPLANE_TEST_CRASH_BEFORE_BOOTSTRAP_CALL",
                    )
                    .is_some(),
                    ..defaults
                }
            },
            log_format: o.log_format.unwrap_or(LogFormat::Text),
            worker_threads,
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

/// 1000: a boot step's time limit is in real seconds. Builds with the `testkit` feature read
/// `BOOTPLANE_TEST_STEP_LIMIT_MS_PER_SECOND` so the browser test sees a machine flagged in
/// seconds; nothing configures it otherwise.
fn step_limit_ms_per_second() -> i64 {
    #[cfg(feature = "testkit")]
    if let Some(ms) = std::env::var("BOOTPLANE_TEST_STEP_LIMIT_MS_PER_SECOND")
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|ms| *ms > 0)
    {
        return ms;
    }
    1000
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
    fn full_mode_without_a_router_or_pool_says_so_at_start() {
        let full = ServeOptions {
            dhcp_mode: Some(DhcpMode::Full),
            ..ServeOptions::default()
        };
        let c = Config::resolve(full, iface()).unwrap();
        let warnings = c.startup_warnings();
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("no router") && w.contains("br0")),
            "{warnings:?}"
        );
        assert!(
            warnings.iter().any(|w| w.contains("--dhcp-pool")),
            "{warnings:?}"
        );
        let routed = ServeOptions {
            dhcp_mode: Some(DhcpMode::Full),
            dhcp_pool: Some("10.77.0.100-10.77.0.150".parse().unwrap()),
            ..ServeOptions::default()
        };
        let with_gateway = InterfaceInfo {
            gateway: Some(Ipv4Addr::new(10, 77, 0, 254)),
            ..iface()
        };
        let c = Config::resolve(routed, with_gateway).unwrap();
        assert_eq!(c.startup_warnings(), Vec::<String>::new());
        let proxy = Config::resolve(ServeOptions::default(), iface()).unwrap();
        assert_eq!(proxy.startup_warnings(), Vec::<String>::new());
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
        let file: ServeOptions = toml::from_str::<FileOptions>(
            "http_port = 9000\ndhcp_mode = \"full\"\ntalos_version = \"v1.10.9\"",
        )
        .unwrap()
        .into();
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
            toml::from_str::<FileOptions>("events_port = \"off\"\nkernel_log_port = 5001")
                .unwrap()
                .into();
        let c = Config::resolve(file, iface()).unwrap();
        assert_eq!(c.boot.events_port, None);
        assert_eq!(c.boot.kernel_log_port, Some(5001));
        assert_eq!("off".parse::<PortSetting>(), Ok(PortSetting::Off));
        assert!("0".parse::<PortSetting>().is_err());
        assert!("70000".parse::<PortSetting>().is_err());
        assert!(toml::from_str::<FileOptions>("events_port = 0").is_err());
        let zero = ServeOptions {
            boot_log_lines: Some(0),
            ..Default::default()
        };
        assert!(Config::resolve(zero, iface()).is_err());
    }
}
