//! Kernel arguments per Talos version and architecture, and boot asset names.

use std::net::Ipv4Addr;

use crate::model::ReportTargets;

/// CPU architecture of boot assets, as Talos names them in release file names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    /// Maps iPXE's `${buildarch}` (x86_64, i386, arm64, arm32) to a Talos asset arch.
    /// 32-bit x86 iPXE (undionly.kpxe) runs on 64-bit machines, so it maps to amd64.
    pub fn from_ipxe_buildarch(buildarch: &str) -> Arch {
        match buildarch {
            "arm64" | "aarch64" => Arch::Arm64,
            _ => Arch::Amd64,
        }
    }

    /// The architecture of a machine from its DHCP client architecture (option 93): ARM64 UEFI
    /// (11, and 19 for HTTP boot) is arm64, everything else (and not seen yet) amd64.
    pub fn of_dhcp_client(client_arch: Option<u16>) -> Arch {
        match client_arch {
            Some(11 | 19) => Arch::Arm64,
            _ => Arch::Amd64,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    pub fn kernel_file(&self) -> String {
        format!("vmlinuz-{}", self.as_str())
    }

    pub fn initramfs_file(&self) -> String {
        format!("initramfs-{}.xz", self.as_str())
    }
}

/// (major, minor) of a `vX.Y.Z` version; `None` if it does not parse.
pub fn minor_version(version: &str) -> Option<(u32, u32)> {
    let rest = version.strip_prefix('v')?;
    let mut parts = rest.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The kernel command line for booting Talos `version` over the network, in the order the
/// Talos imager writes it for metal images, plus serial consoles, `initrd=` for UEFI
/// firmware and the machine's config URL. `extra` is appended last.
pub fn kernel_args(version: &str, arch: Arch, config_url: &str, extra: &[String]) -> Vec<String> {
    let v = minor_version(version).unwrap_or((1, 11));
    let mut args: Vec<String> = vec!["talos.platform=metal".into()];
    match arch {
        Arch::Amd64 => args.extend(["console=tty0".into(), "console=ttyS0".into()]),
        Arch::Arm64 => args.extend(["console=tty0".into(), "console=ttyAMA0".into()]),
    }
    args.extend(
        [
            "init_on_alloc=1",
            "slab_nomerge",
            "pti=on",
            "consoleblank=0",
            "nvme_core.io_timeout=4294967295",
            "printk.devkmsg=on",
        ]
        .map(String::from),
    );
    if v <= (1, 10) {
        args.extend(
            ["ima_template=ima-ng", "ima_appraise=fix", "ima_hash=sha512"].map(String::from),
        );
    }
    if v >= (1, 10) {
        args.push("selinux=1".into());
    }
    if v >= (1, 13) {
        args.push("proc_mem.force_override=never".into());
    }
    args.push(format!("initrd={}", arch.initramfs_file()));
    args.push(format!("talos.config={config_url}"));
    args.extend(extra.iter().cloned());
    args
}

/// Where a node is told to push its events and kernel log: `<ip>:<port>` for the event sink
/// (a gRPC endpoint, host:port) and `tcp://<ip>:<port>` for the kernel log (a URL; JSON lines
/// over TCP). A target the operator already names in `extra` (their own `--kernel-args`) is
/// theirs: bootplane's is left out, on the command line (Talos reads the first occurrence) and
/// in the config documents (an `EventSinkConfig` would override their argument).
pub fn report_targets(
    advertise: Ipv4Addr,
    events_port: Option<u16>,
    kernel_log_port: Option<u16>,
    extra: &[String],
) -> ReportTargets {
    let given = |key: &str| extra.iter().any(|a| a.starts_with(&format!("{key}=")));
    ReportTargets {
        events_endpoint: events_port
            .filter(|_| !given(EVENTS_SINK_ARG))
            .map(|port| format!("{advertise}:{port}")),
        kernel_log_url: kernel_log_port
            .filter(|_| !given(KERNEL_LOG_ARG))
            .map(|port| format!("tcp://{advertise}:{port}")),
    }
}

/// Kernel arguments that make a node push its events and kernel log to `targets`. Every
/// supported Talos version (1.8 and later) reads both; installs that drop extra kernel
/// arguments (systemd-boot, and GRUB with `grubUseUKICmdline` from 1.12) keep pushing through
/// the same targets as `EventSinkConfig` and `KmsgLogConfig` documents in the config.
pub fn report_args(targets: &ReportTargets) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(endpoint) = &targets.events_endpoint {
        args.push(format!("{EVENTS_SINK_ARG}={endpoint}"));
    }
    if let Some(url) = &targets.kernel_log_url {
        args.push(format!("{KERNEL_LOG_ARG}={url}"));
    }
    args
}

/// Talos's kernel parameter for its event sink endpoint.
pub const EVENTS_SINK_ARG: &str = "talos.events.sink";
/// Talos's kernel parameter for a kernel log destination.
pub const KERNEL_LOG_ARG: &str = "talos.logging.kernel";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_11_args_match_the_imager_plus_serial_and_config() {
        let args = kernel_args(
            "v1.11.6",
            Arch::Amd64,
            "http://10.0.0.1:8080/config?mac=x",
            &[],
        );
        assert_eq!(
            args.join(" "),
            "talos.platform=metal console=tty0 console=ttyS0 init_on_alloc=1 slab_nomerge pti=on \
             consoleblank=0 nvme_core.io_timeout=4294967295 printk.devkmsg=on selinux=1 \
             initrd=initramfs-amd64.xz talos.config=http://10.0.0.1:8080/config?mac=x"
        );
    }

    #[test]
    fn version_quirks() {
        let v19 = kernel_args("v1.9.6", Arch::Amd64, "u", &[]).join(" ");
        assert!(v19.contains("ima_hash=sha512") && !v19.contains("selinux=1"));
        let v110 = kernel_args("v1.10.9", Arch::Amd64, "u", &[]).join(" ");
        assert!(v110.contains("ima_hash=sha512") && v110.contains("selinux=1"));
        let v113 = kernel_args(
            "v1.13.9",
            Arch::Arm64,
            "u",
            &["talos.dashboard.disabled=1".into()],
        );
        let v113 = v113.join(" ");
        assert!(v113.contains("proc_mem.force_override=never"));
        assert!(v113.contains("console=ttyAMA0") && !v113.contains("ttyS0"));
        assert!(v113.ends_with("talos.dashboard.disabled=1"));
        assert!(v113.contains("initrd=initramfs-arm64.xz"));
    }

    #[test]
    fn report_args_point_at_bootplane_unless_the_operator_set_them() {
        let ip = Ipv4Addr::new(10, 0, 0, 1);
        let args = |e, k, extra: &[String]| report_args(&report_targets(ip, e, k, extra));
        assert_eq!(
            args(Some(4002), Some(4001), &[]),
            vec![
                "talos.events.sink=10.0.0.1:4002",
                "talos.logging.kernel=tcp://10.0.0.1:4001"
            ]
        );
        assert_eq!(
            args(None, Some(4001), &[]),
            vec!["talos.logging.kernel=tcp://10.0.0.1:4001"]
        );
        assert!(args(None, None, &[]).is_empty());
        let own = ["talos.events.sink=192.0.2.9:9000".to_string()];
        assert_eq!(
            args(Some(4002), Some(4001), &own),
            vec!["talos.logging.kernel=tcp://10.0.0.1:4001"]
        );
        assert_eq!(
            report_targets(ip, Some(4002), Some(4001), &own),
            ReportTargets {
                events_endpoint: None,
                kernel_log_url: Some("tcp://10.0.0.1:4001".into()),
            },
            "the operator's own sink is not overridden by a document either"
        );
    }

    #[test]
    fn buildarch_mapping() {
        assert_eq!(Arch::from_ipxe_buildarch("i386"), Arch::Amd64);
        assert_eq!(Arch::from_ipxe_buildarch("x86_64"), Arch::Amd64);
        assert_eq!(Arch::from_ipxe_buildarch("arm64"), Arch::Arm64);
    }
}
