//! Kernel arguments per Talos version and architecture, and boot asset names.

use std::net::Ipv4Addr;

use crate::model::Mac;
use crate::model::ReportTargets;

pub use crate::model::assets::Arch;

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
    let mut args = base_args(version, arch);
    args.push(config_arg(config_url));
    args.extend(extra.iter().cloned());
    args
}

fn config_arg(config_url: &str) -> String {
    format!("talos.config={config_url}")
}

/// The arguments every network boot of `version` on `arch` carries before the config URL:
/// the imager's metal arguments, serial consoles and `initrd=`.
pub fn base_args(version: &str, arch: Arch) -> Vec<String> {
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
    args
}

/// Bytes of kernel command line that reach Talos. The kernel copies the command line into
/// `boot_command_line[COMMAND_LINE_SIZE]` and `COMMAND_LINE_SIZE` is 2,048 on x86 and arm64;
/// the copy is NUL-terminated inside that buffer, so 2,047 bytes of arguments survive and
/// whatever lies past them is cut off without a message (siderolabs/talos#12162, #13006).
pub const COMMAND_LINE_LIMIT: usize = 2047;

/// Where a stretch of a command line comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// `vmlinuz-<arch>`: on UEFI, iPXE hands the kernel its image name, then the arguments.
    KernelName,
    /// The version's own arguments (`base_args`).
    Base,
    /// `talos.config=<url>`.
    ConfigUrl,
    /// What the boot assets' Image Factory schematic adds.
    Schematic,
    /// `talos.events.sink=` and `talos.logging.kernel=` (`report_args`).
    ReportIn,
    /// `talos.config.oauth.*` under `--config-access oauth`.
    OAuth,
    /// The operator's `--kernel-args`.
    Operator,
}

impl Part {
    pub fn label(self) -> &'static str {
        match self {
            Part::KernelName => "kernel name",
            Part::Base => "base arguments",
            Part::ConfigUrl => "config URL",
            Part::Schematic => "schematic arguments",
            Part::ReportIn => "report-in",
            Part::OAuth => "OAuth",
            Part::Operator => "--kernel-args",
        }
    }
}

/// A machine's whole kernel command line, by where each argument comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandLine {
    parts: Vec<(Part, Vec<String>)>,
}

impl CommandLine {
    /// The arguments iPXE is given (everything but the kernel name), space-separated.
    pub fn args(&self) -> String {
        self.parts
            .iter()
            .filter(|(part, _)| *part != Part::KernelName)
            .flat_map(|(_, args)| args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Bytes of each non-empty part: its arguments and the space before each, except before
    /// the very first argument, so the sizes add up to `len`.
    pub fn sizes(&self) -> Vec<(Part, usize)> {
        let mut first = true;
        let mut out = Vec::new();
        for (part, args) in &self.parts {
            if args.is_empty() {
                continue;
            }
            let mut size = 0;
            for arg in args {
                size += arg.len() + usize::from(!first);
                first = false;
            }
            out.push((*part, size));
        }
        out
    }

    /// The length of the command line the kernel sees, in bytes.
    pub fn len(&self) -> usize {
        self.sizes().iter().map(|(_, size)| size).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Refuses a command line the kernel would cut, with its length and what makes it up.
    pub fn check(&self) -> Result<(), CommandLineTooLong> {
        let len = self.len();
        if len <= COMMAND_LINE_LIMIT {
            return Ok(());
        }
        Err(CommandLineTooLong {
            len,
            sizes: self.sizes(),
        })
    }
}

/// A command line past `COMMAND_LINE_LIMIT`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the kernel command line would be {} bytes, over the {} bytes the kernel keeps (it drops \
     what is past them without a word): {}",
    thousands(*.len),
    thousands(COMMAND_LINE_LIMIT),
    self.parts_text()
)]
pub struct CommandLineTooLong {
    pub len: usize,
    pub sizes: Vec<(Part, usize)>,
}

impl CommandLineTooLong {
    fn parts_text(&self) -> String {
        self.sizes
            .iter()
            .map(|(part, size)| format!("{} {}", part.label(), thousands(*size)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `2113` as `2,113`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// What the appliance adds to every install command line besides the version's own
/// arguments and its assets' schematic: the config URL's prefix, the report-in and OAuth
/// arguments, the operator's `--kernel-args` (`config::BootConfig::kernel_additions`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Additions {
    /// `http://<advertise-ip>[:port]`, the config URL's prefix.
    pub http_base: String,
    pub report: Vec<String>,
    pub oauth: Vec<String>,
    pub operator: Vec<String>,
}

impl Default for Additions {
    fn default() -> Additions {
        Additions::offline()
    }
}

impl Additions {
    /// What a process without `serve`'s settings (the CLI) can count on: the shortest config
    /// URL bootplane hands out and nothing else, so it refuses only what `serve` refuses too.
    pub fn offline() -> Additions {
        Additions {
            http_base: "http://0.0.0.0".into(),
            report: Vec::new(),
            oauth: Vec::new(),
            operator: Vec::new(),
        }
    }

    /// The config URL of the machine with `mac`.
    pub fn config_url(&self, mac: Mac) -> String {
        format!("{}/config?mac={mac}", self.http_base)
    }

    /// The whole command line of the machine with `mac` booting `version` on `arch` from
    /// assets whose schematic adds `schematic`: the version's arguments and config URL, then
    /// the schematic's, the report-in and OAuth arguments, the operator's last.
    pub fn command_line(
        &self,
        version: &str,
        arch: Arch,
        mac: Mac,
        schematic: &[String],
    ) -> CommandLine {
        CommandLine {
            parts: vec![
                (Part::KernelName, vec![arch.kernel_file()]),
                (Part::Base, base_args(version, arch)),
                (Part::ConfigUrl, vec![config_arg(&self.config_url(mac))]),
                (Part::Schematic, schematic.to_vec()),
                (Part::ReportIn, self.report.clone()),
                (Part::OAuth, self.oauth.clone()),
                (Part::Operator, self.operator.clone()),
            ],
        }
    }

    /// The shortest command line any machine can have with `schematic` (every supported
    /// Talos line, both architectures): when it is too long, every one is.
    pub fn shortest(&self, schematic: &[String]) -> CommandLine {
        let mac = Mac([0; 6]);
        let mut shortest: Option<CommandLine> = None;
        for (major, minor) in crate::talos::config::SUPPORTED {
            for arch in [Arch::Amd64, Arch::Arm64] {
                let line = self.command_line(&format!("v{major}.{minor}.0"), arch, mac, schematic);
                if shortest.as_ref().is_none_or(|s| line.len() < s.len()) {
                    shortest = Some(line);
                }
            }
        }
        shortest.unwrap_or_else(|| self.command_line("v1.11.0", Arch::Amd64, mac, schematic))
    }
}

/// The client ID Talos's device flow sends (`talos.config.oauth.client_id`).
pub const OAUTH_CLIENT_ID: &str = "bootplane";

/// The kernel arguments that make Talos run the OAuth device flow against the config URL's
/// host (`/device/code`, `/token`) before it downloads its config, sending the MAC along.
pub fn oauth_args() -> Vec<String> {
    vec![
        format!("talos.config.oauth.client_id={OAUTH_CLIENT_ID}"),
        "talos.config.oauth.extra_variable=mac".into(),
    ]
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

    /// Operator arguments that bring a v1.11 amd64 line to exactly `len` bytes.
    fn line_of(len: usize) -> CommandLine {
        let mut additions = Additions::offline();
        let short = additions.command_line("v1.11.6", Arch::Amd64, Mac([0; 6]), &[]);
        additions.operator = vec![format!("x={}", "a".repeat(len - short.len() - 3))];
        additions.command_line("v1.11.6", Arch::Amd64, Mac([0; 6]), &[])
    }

    #[test]
    fn the_kernel_keeps_2047_bytes_of_command_line_and_the_nul() {
        assert!(line_of(2047).check().is_ok());
        let err = line_of(2048).check().unwrap_err();
        assert_eq!(err.len, 2048);
        assert_eq!(err.sizes.iter().map(|(_, n)| n).sum::<usize>(), 2048);
        let text = err.to_string();
        assert!(
            text.starts_with(
                "the kernel command line would be 2,048 bytes, over the 2,047 bytes the kernel keeps"
            ),
            "{text}"
        );
        assert!(
            text.contains("kernel name 13, base arguments ")
                && text.contains("config URL ")
                && text.ends_with(&format!(
                    "--kernel-args {}",
                    thousands(err.sizes.last().unwrap().1)
                ))
                && !text.contains("schematic"),
            "{text}"
        );
    }

    #[test]
    fn the_command_line_is_the_args_ipxe_gets_after_the_kernel_name() {
        let mut additions = Additions::offline();
        additions.report = vec!["talos.events.sink=10.0.0.1:4002".into()];
        additions.operator = vec!["console=ttyS1".into()];
        let mac = Mac([0x52, 0x54, 0, 0, 0, 1]);
        let schematic = ["net.ifnames=0".to_string()];
        let line = additions.command_line("v1.11.6", Arch::Amd64, mac, &schematic);
        let expected = kernel_args(
            "v1.11.6",
            Arch::Amd64,
            "http://0.0.0.0/config?mac=52:54:00:00:00:01",
            &s(&[
                "net.ifnames=0",
                "talos.events.sink=10.0.0.1:4002",
                "console=ttyS1",
            ]),
        )
        .join(" ");
        assert_eq!(line.args(), expected);
        assert_eq!(line.len(), "vmlinuz-amd64 ".len() + expected.len());
    }

    fn s(items: &[&str]) -> Vec<String> {
        items.iter().map(|i| i.to_string()).collect()
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(7), "7");
        assert_eq!(thousands(2047), "2,047");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn buildarch_mapping() {
        assert_eq!(Arch::from_ipxe_buildarch("i386"), Arch::Amd64);
        assert_eq!(Arch::from_ipxe_buildarch("x86_64"), Arch::Amd64);
        assert_eq!(Arch::from_ipxe_buildarch("arm64"), Arch::Arm64);
    }
}
