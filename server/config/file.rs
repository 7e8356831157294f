//! The TOML config file's schema.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::args::{option_names, ServeOptions};
use super::values::{
    ConfigAccess, DhcpMode, EfiBinaryArg, LogFormat, Pool, PortSetting, RaMode, Secret,
};
use super::ConfigError;
use crate::model::Ipv4Cidr;

/// The TOML config file: the options of `ServeOptions` under the same names with underscores
/// (`http_port = 8080`); an unknown key is refused.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOptions {
    pub data_dir: Option<PathBuf>,
    pub interface: Option<String>,
    pub advertise_ip: Option<Ipv4Addr>,
    pub http_bind: Option<IpAddr>,
    pub http_port: Option<u16>,
    pub https_port: Option<PortSetting>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub http_max_connections: Option<usize>,
    pub http_max_connections_per_address: Option<usize>,
    pub http_header_timeout: Option<u64>,
    pub http_idle_timeout: Option<u64>,
    pub tftp_port: Option<u16>,
    pub tftp_block_limit: Option<u16>,
    pub tftp_window_limit: Option<u16>,
    pub dhcp_mode: Option<DhcpMode>,
    pub dhcp_port: Option<u16>,
    pub pxe_port: Option<u16>,
    pub dhcp_subnet: Option<Ipv4Cidr>,
    pub dhcp_pool: Option<Pool>,
    pub dhcp_router: Option<Ipv4Addr>,
    pub dhcp_dns: Option<Vec<Ipv4Addr>>,
    pub dhcp_lease_time: Option<u32>,
    pub ipv6_ra: Option<RaMode>,
    pub ipxe_dir: Option<PathBuf>,
    pub efi_binary: Option<EfiBinaryArg>,
    pub arm64_binary: Option<String>,
    pub images_dir: Option<PathBuf>,
    pub factory_url: Option<String>,
    pub release_url: Option<String>,
    pub talos_version: Option<String>,
    pub kernel_args: Option<String>,
    pub retry_secs: Option<u32>,
    pub config_access: Option<ConfigAccess>,
    pub talos_api_port: Option<u16>,
    pub bootstrap_holdoff: Option<u64>,
    pub wipe_window: Option<u64>,
    pub wipe_confirm: Option<u64>,
    pub etcd_lost_confirm: Option<u64>,
    pub events_port: Option<PortSetting>,
    pub kernel_log_port: Option<PortSetting>,
    pub boot_log_lines: Option<u32>,
    pub log_format: Option<LogFormat>,
    pub worker_threads: Option<usize>,
    pub admin_password: Option<Secret>,
    pub secure_cookies: Option<bool>,
}

impl From<FileOptions> for ServeOptions {
    fn from(file: FileOptions) -> ServeOptions {
        macro_rules! take {
            ($($f:ident),+) => {{
                let FileOptions { $($f),+ } = file;
                ServeOptions { $($f),+ }
            }};
        }
        option_names!(take)
    }
}

/// The options a config file sets.
pub fn read_file(path: &Path) -> Result<ServeOptions, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_text(&text).map_err(|message| ConfigError::Parse {
        path: path.to_path_buf(),
        message,
    })
}

/// The options a config file's text sets, or why it is refused.
pub fn parse_text(text: &str) -> Result<ServeOptions, String> {
    let file: FileOptions = toml::from_str(text).map_err(|e| e.to_string())?;
    Ok(file.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_file_keys_are_rejected() {
        let err = toml::from_str::<FileOptions>("http_prot = 1").unwrap_err();
        assert!(err.to_string().contains("http_prot"), "{err}");
    }

    #[test]
    fn a_config_file_sets_the_options_of_the_same_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bootplane.toml");
        std::fs::write(
            &path,
            "http_port = 9000\ndhcp_dns = [\"10.0.0.53\"]\nadmin_password = \"a long password\"\n",
        )
        .unwrap();
        let o = read_file(&path).unwrap();
        assert_eq!(o.http_port, Some(9000));
        assert_eq!(o.dhcp_dns, Some(vec![Ipv4Addr::new(10, 0, 0, 53)]));
        assert_eq!(o.admin_password, Some(Secret("a long password".into())));
        assert_eq!(o.tftp_port, None);
        std::fs::write(&path, "http_prot = 1\n").unwrap();
        let err = read_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("bootplane.toml") && err.contains("http_prot"),
            "{err}"
        );
    }
}
