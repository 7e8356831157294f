//! End-to-end network boot with real firmware.
//!
//! Each test builds an isolated LAN (a network namespace with a bridge, tap devices for the
//! VMs), runs the real `bootplane` binary on it, registers the VMs with the CLI, boots QEMU
//! VMs with SeaBIOS + QEMU's iPXE ROM or OVMF with its own PXE, and waits for the stand-in
//! "Talos" (tests/lab/build-standin.sh) to print its marker on the serial console. A VM passes
//! when its marker shows its own MAC (and, in full DHCP mode, its registered IP), bootplane's
//! event log shows the whole boot chain for that MAC, and the config it fetched is its own: the
//! SHA-256 the stand-in printed is the one bootplane logged serving to that MAC and the one of
//! `bootplane cluster config --mac` for it, and those bytes are Talos v1.13.9 documents that
//! validate against that line's schema and carry the machine's hostname, address, VIP and
//! nameservers.
//!
//! Privileged (root, `ip netns`, QEMU), so gated: run with
//! `BOOTPLANE_E2E=1 cargo test --test it firmware_e2e:: -- --nocapture`.
//! Serial logs, bootplane's log and the data dir are kept under `tests/artifacts/<test>/`.
//! Facts behind the QEMU command lines: ../shared/research/firmware-lab.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::Ordering;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::kit::{self, impair, turns};

const TALOS_VERSION: &str = "v1.13.9";
/// Talos's JSON schema of that line (Talos's file unchanged; see its README).
const TALOS_SCHEMA: &str = "server/talos/schema/config.schema.v1.13.9.json";
const HTTP_PORT: u16 = 8080;
const IPXE_DIR: &str = "/usr/lib/ipxe";
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// Prefix of every namespace these tests create: `bpe2e-<test pid>-<scenario>`.
const NS_PREFIX: &str = "bpe2e-";
/// From power-on to marker; measured single boots take 8 s (BIOS) to 25 s (3 × OVMF PXE).
const BOOT_DEADLINE: Duration = Duration::from_secs(180);

/// Serial-console text that means a boot has failed for good (firmware-lab.md, "Pitfalls").
const FAILURE_TEXTS: &[&str] = &[
    "MARKER-FAILED",
    "No bootable device",
    "Kernel panic",
    "Shell>",
];

/// `None` (the test is skipped) without `BOOTPLANE_E2E=1`; else the machine for this test
/// alone: QEMU is slow under TCG, so the scenarios run one at a time, and no other test's
/// appliance runs beside them (`kit::turns`).
fn e2e_enabled() -> Option<turns::Alone> {
    if std::env::var("BOOTPLANE_E2E").as_deref() != Ok("1") {
        println!("skipped: set BOOTPLANE_E2E=1");
        return None;
    }
    Some(turns::alone())
}

#[test]
fn full_dhcp_bios_and_uefi_ovmf_pxe() {
    let Some(_serial) = e2e_enabled() else { return };
    let mut lab = Lab::new("full_dhcp_bios_and_uefi_ovmf_pxe");
    let ns = lab.namespace("full");
    lab.bridge(&ns, "10.77.0.1/24");
    let lan = Lan {
        subnet: "10.77.0.0/24",
        gateway: "10.77.0.1",
        vip: "10.77.0.10",
        dns: Some("10.77.0.1"),
        appliance: Some("10.77.0.1"),
    };

    #[rustfmt::skip]
    let vms = [
        Vm { name: "bios-a", firmware: Firmware::SeaBios, mac: "52:54:00:e2:01:01",
             hostname: "cp-1", role: Role::Controlplane, ip: "10.77.0.11" },
        Vm { name: "uefi-pxe", firmware: Firmware::OvmfPxe, mac: "52:54:00:e2:01:02",
             hostname: "cp-2", role: Role::Controlplane, ip: "10.77.0.12" },
        Vm { name: "bios-c", firmware: Firmware::SeaBios, mac: "52:54:00:e2:01:03",
             hostname: "cp-3", role: Role::Controlplane, ip: "10.77.0.13" },
        Vm { name: "bios-w", firmware: Firmware::SeaBios, mac: "52:54:00:e2:01:04",
             hostname: "worker-1", role: Role::Worker, ip: "10.77.0.14" },
    ];
    for vm in &vms {
        lab.register(vm, &lan);
    }
    lab.init_cluster(lan.vip);
    lab.serve_full_dhcp(&ns, &lan, "10.77.0.100-10.77.0.199");

    let outcomes = lab.boot_all(&ns, &vms);
    let mut problems = Vec::new();
    for (vm, outcome) in vms.iter().zip(&outcomes) {
        problems.extend(lab.check_vm(vm, outcome, DhcpMode::Full, &lan));
    }
    problems.extend(configs_are_distinct(&vms, &outcomes));
    if problems.is_empty() {
        // The stand-ins stop at the config; Talos doubles take over their addresses, as the
        // installed nodes would, and bootplane must see them report in and bootstrap once.
        problems.extend(lab.talos_nodes_report_in_and_bootstrap_once(&ns, &vms, "10.77.0.11"));
    }
    lab.finish(problems);
}

#[test]
fn proxy_dhcp_beside_site_router() {
    let Some(_serial) = e2e_enabled() else { return };
    let mut lab = Lab::new("proxy_dhcp_beside_site_router");
    let ns = lab.namespace("proxy");
    let router = lab.namespace("proxy-r");
    lab.bridge(&ns, "10.78.0.2/24");
    lab.site_router(&ns, &router);
    // No nameservers registered: the machines' configs carry none of their own.
    let lan = Lan {
        subnet: "10.78.0.0/24",
        gateway: "10.78.0.1",
        vip: "10.78.0.10",
        dns: None,
        appliance: Some("10.78.0.2"),
    };

    // The CLI takes a static address; in proxy mode the site router leases one instead.
    #[rustfmt::skip]
    let vms = [
        Vm { name: "bios", firmware: Firmware::SeaBios, mac: "52:54:00:e2:02:01",
             hostname: "cp-1", role: Role::Controlplane, ip: "10.78.0.21" },
        Vm { name: "uefi-pxe", firmware: Firmware::OvmfPxe, mac: "52:54:00:e2:02:02",
             hostname: "worker-1", role: Role::Worker, ip: "10.78.0.22" },
    ];
    for vm in &vms {
        lab.register(vm, &lan);
    }
    lab.init_cluster(lan.vip);
    lab.serve(&ns, "10.78.0.2", &["--dhcp-mode", "proxy"]);

    let outcomes = lab.boot_all(&ns, &vms);
    let mut problems = Vec::new();
    for (vm, outcome) in vms.iter().zip(&outcomes) {
        problems.extend(lab.check_vm(vm, outcome, DhcpMode::Proxy, &lan));
        if let Outcome::Marker(marker) = outcome {
            if !in_router_range(&marker.ip) {
                problems.push(format!(
                    "{}: ip={} is not from the site router's range 10.78.0.100-150",
                    vm.name, marker.ip
                ));
            }
        }
    }
    problems.extend(configs_are_distinct(&vms, &outcomes));
    lab.finish(problems);
}

/// The bad links `boots_complete_on_a_bad_link` boots through: `BOOTPLANE_FAULTS` names them,
/// comma-separated (`clean`, the same path with nothing done to it, for comparison; `loss`,
/// `delay`, `reorder`; or `all`); CI runs `loss` alone.
fn fault_profiles() -> Vec<(&'static str, impair::Profile)> {
    let all = [
        ("clean", impair::Profile::CLEAN),
        (
            "loss",
            impair::Profile {
                loss: 0.10,
                ..impair::Profile::CLEAN
            },
        ),
        (
            "delay",
            impair::Profile {
                delay: Duration::from_millis(100),
                ..impair::Profile::CLEAN
            },
        ),
        (
            "reorder",
            impair::Profile {
                reorder: 0.25,
                hold: Duration::from_millis(20),
                ..impair::Profile::CLEAN
            },
        ),
    ];
    let wanted = std::env::var("BOOTPLANE_FAULTS").unwrap_or_else(|_| "loss".into());
    all.into_iter()
        .filter(|(name, _)| wanted.split(',').any(|w| w == "all" || w == *name))
        .collect()
}

/// Real firmware through a bad link (the kernel here has no netem, so `kit::impair` makes one
/// in user space between each VM and the bridge): 10% of the frames lost each way, or 100 ms
/// added each way, or a quarter of the frames held back 20 ms so later ones overtake them.
/// SeaBIOS + iPXE (DHCP, then HTTP) and OVMF's own PXE (DHCP, TFTP of iPXE, then iPXE's DHCP
/// and HTTP) must each still boot to the marker with their own config, as on a clean LAN; the
/// figures (time to the marker, frames lost and overtaken, what the appliance sent again) are
/// printed for the campaign's note.
#[test]
fn boots_complete_on_a_bad_link() {
    let Some(_serial) = e2e_enabled() else { return };
    for (fault, profile) in fault_profiles() {
        let test: &'static str = match fault {
            "clean" => "bad_link_clean",
            "loss" => "bad_link_loss",
            "delay" => "bad_link_delay",
            _ => "bad_link_reorder",
        };
        let mut lab = Lab::new(test);
        lab.impair = Some(profile);
        lab.deadline = Duration::from_secs(600);
        let ns = lab.namespace("bad");
        lab.bridge(&ns, "10.79.0.1/24");
        let lan = Lan {
            subnet: "10.79.0.0/24",
            gateway: "10.79.0.1",
            vip: "10.79.0.10",
            dns: Some("10.79.0.1"),
            appliance: Some("10.79.0.1"),
        };
        #[rustfmt::skip]
        let vms = [
            Vm { name: "bios", firmware: Firmware::SeaBios, mac: "52:54:00:e2:03:01",
                 hostname: "cp-1", role: Role::Controlplane, ip: "10.79.0.11" },
            Vm { name: "uefi-pxe", firmware: Firmware::OvmfPxe, mac: "52:54:00:e2:03:02",
                 hostname: "worker-1", role: Role::Worker, ip: "10.79.0.12" },
        ];
        for vm in &vms {
            lab.register(vm, &lan);
        }
        lab.init_cluster(lan.vip);
        lab.serve_full_dhcp(&ns, &lan, "10.79.0.100-10.79.0.199");
        let tcp_before = lab.tcp_retransmitted();
        let outcomes = lab.boot_all(&ns, &vms);
        let mut problems = Vec::new();
        for (vm, outcome) in vms.iter().zip(&outcomes) {
            problems.extend(lab.check_vm(vm, outcome, DhcpMode::Full, &lan));
        }
        problems.extend(configs_are_distinct(&vms, &outcomes));
        // The link did what it was asked to: a fault that never happened proves nothing.
        for (name, link) in &lab.impairers {
            println!(
                "[{test}] {name}: to the VM {}; from the VM {}",
                link.to_vm.text(),
                link.from_vm.text()
            );
            let (lost, overtaken) = (
                link.to_vm.lost.load(Ordering::Relaxed) + link.from_vm.lost.load(Ordering::Relaxed),
                link.to_vm.overtaken.load(Ordering::Relaxed)
                    + link.from_vm.overtaken.load(Ordering::Relaxed),
            );
            if (profile.loss > 0.0 && lost == 0) || (profile.reorder > 0.0 && overtaken == 0) {
                problems.push(format!(
                    "{name}: the bad link lost {lost} and reordered {overtaken} frames"
                ));
            }
        }
        let metrics = lab.metrics(&ns);
        let resent: Vec<&str> = metrics
            .lines()
            .filter(|l| {
                l.starts_with("bootplane_tftp_resent_packets")
                    || l.starts_with("bootplane_dhcp_replies")
            })
            .collect();
        println!(
            "[{test}] appliance: {}; TCP segments sent again: {}",
            resent.join(", "),
            lab.tcp_retransmitted()
                .zip(tcp_before)
                .map_or("n/a".into(), |(a, b)| (a - b).to_string())
        );
        lab.finish(problems);
    }
}

fn in_router_range(ip: &str) -> bool {
    ip.strip_prefix("10.78.0.")
        .and_then(|host| host.parse::<u8>().ok())
        .is_some_and(|host| (100..=150).contains(&host))
}

// ---------------------------------------------------------------------------------------------
// VMs

#[derive(Clone, Copy, Debug, PartialEq)]
enum Firmware {
    /// SeaBIOS with QEMU's default iPXE ROM on virtio-net-pci.
    SeaBios,
    /// OVMF UEFI with its own PXE (no option ROM), loading ipxe.efi over TFTP.
    OvmfPxe,
}

#[derive(Clone, Copy, Debug)]
enum Role {
    Controlplane,
    Worker,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum DhcpMode {
    Full,
    Proxy,
}

#[derive(Debug)]
struct Vm {
    name: &'static str,
    firmware: Firmware,
    mac: &'static str,
    hostname: &'static str,
    role: Role,
    /// Static IPv4 registered with the CLI (without prefix; the LAN is a /24).
    ip: &'static str,
}

/// The LAN a scenario registers its machines on.
#[derive(Debug)]
struct Lan {
    /// The machines' subnet (every registered address is a /24 in it).
    subnet: &'static str,
    gateway: &'static str,
    /// The cluster's Layer 2 VIP (API endpoint).
    vip: &'static str,
    /// Nameservers registered with every machine, if any.
    dns: Option<&'static str>,
    /// The appliance's address when it serves (the configs then name its event sink and
    /// kernel log receiver on their default ports).
    appliance: Option<&'static str>,
}

#[derive(Debug)]
struct Marker {
    line: String,
    mac: String,
    ip: String,
    config_status: Option<String>,
    config_bytes: Option<String>,
    /// SHA-256 (hex) of the config the stand-in fetched, `none` without one.
    config_sha256: Option<String>,
    /// The `config-kinds:` line: the kind of each document after the first.
    kinds: Option<Vec<String>>,
    seconds: f64,
}

#[derive(Debug)]
enum Outcome {
    Marker(Marker),
    Failed(String),
}

/// Parses `BOOTPLANE-MARKER mac=.. ip=.. config_status=.. config_bytes=.. config_sha256=..` and
/// the `config-kinds:` line the stand-in prints from the config it fetched.
fn parse_marker(serial: &str, seconds: f64) -> Option<Marker> {
    let mut lines = serial.lines().map(|l| l.trim_end_matches('\r'));
    let line = lines.by_ref().find_map(|l| {
        l.find("BOOTPLANE-MARKER ")
            .map(|at| l[at..].trim().to_owned())
    })?;
    let fields: BTreeMap<&str, &str> = line
        .split_whitespace()
        .filter_map(|word| word.split_once('='))
        .collect();
    let kinds = lines.map(str::trim).find_map(|l| {
        l.strip_prefix("config-kinds:")
            .map(|kinds| kinds.split_whitespace().map(str::to_owned).collect())
    });
    let field = |name: &str| fields.get(name).map(|s| (*s).to_owned());
    Some(Marker {
        mac: field("mac").unwrap_or_default(),
        ip: field("ip").unwrap_or_default(),
        config_status: field("config_status"),
        config_bytes: field("config_bytes"),
        config_sha256: field("config_sha256"),
        kinds,
        line,
        seconds,
    })
}

fn failure_in(serial: &str) -> Option<String> {
    let plain = strip_escapes(serial);
    for line in plain.lines() {
        if line.contains("failed to load Boot") && line.contains("UEFI PXEv4") {
            return Some(line.trim().to_owned());
        }
        if let Some(text) = FAILURE_TEXTS.iter().find(|t| line.contains(*t)) {
            let line = line.trim();
            return Some(if line.is_empty() {
                (*text).to_owned()
            } else {
                line.to_owned()
            });
        }
    }
    None
}

/// Drops terminal escape sequences (OVMF draws its screen with them).
fn strip_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if c != '\0' {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The lab: namespaces, processes, artifacts; torn down in Drop even when the test panics.

struct Proc {
    name: String,
    child: Child,
}

struct Lab {
    test: &'static str,
    artifacts: PathBuf,
    data_dir: PathBuf,
    scratch: tempfile::TempDir,
    namespaces: Vec<String>,
    procs: Vec<Proc>,
    bootplane: Option<usize>,
    images_dir: PathBuf,
    http_base: String,
    taps: usize,
    /// From power-on to marker.
    deadline: Duration,
    /// A bad link between each VM and the bridge, when the scenario wants one.
    impair: Option<impair::Profile>,
    impairers: Vec<(&'static str, impair::Impairer)>,
}

impl Lab {
    fn new(test: &'static str) -> Self {
        preflight();
        remove_stale_namespaces();
        let artifacts = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/artifacts")
            .join(test);
        if artifacts.exists() {
            fs::remove_dir_all(&artifacts).unwrap();
        }
        fs::create_dir_all(&artifacts).unwrap();
        let scratch = tempfile::Builder::new()
            .prefix("bootplane-e2e-")
            .tempdir()
            .unwrap();
        let images_dir = scratch.path().join("images");
        let lab = Lab {
            test,
            data_dir: artifacts.join("data"),
            artifacts,
            scratch,
            namespaces: Vec::new(),
            procs: Vec::new(),
            bootplane: None,
            images_dir,
            http_base: String::new(),
            taps: 0,
            deadline: BOOT_DEADLINE,
            impair: None,
            impairers: Vec::new(),
        };
        lab.add_boot_assets();
        lab
    }

    /// Puts the stand-in kernel and initramfs in service the way an operator does: `bootplane
    /// images add` from local files with their expected SHA-256, then `images list` must show
    /// them ready. Nothing is copied into the images directory by hand.
    fn add_boot_assets(&self) {
        let standin = build_standin();
        let kernel = standin.join("vmlinuz-amd64");
        let initramfs = standin.join("initramfs-amd64.xz");
        let sha = |p: &Path| {
            use sha2::Digest as _;
            hex::encode(sha2::Sha256::digest(fs::read(p).unwrap()))
        };
        let (kernel_sha, initramfs_sha) = (sha(&kernel), sha(&initramfs));
        let data_dir = self.data_dir.display().to_string();
        let images_dir = self.images_dir.display().to_string();
        let (kernel_arg, initramfs_arg) = (
            kernel.display().to_string(),
            initramfs.display().to_string(),
        );
        let args = [
            "images",
            "add",
            "--data-dir",
            &data_dir,
            "--images-dir",
            &images_dir,
            "--version",
            TALOS_VERSION,
            "--kernel",
            &kernel_arg,
            "--initramfs",
            &initramfs_arg,
            "--sha256-kernel",
            &kernel_sha,
            "--sha256-initramfs",
            &initramfs_sha,
        ];
        let out = self.cli(&args);
        assert!(
            out.status.success(),
            "bootplane images add failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let out = self.cli(&[
            "images",
            "list",
            "--data-dir",
            &data_dir,
            "--images-dir",
            &images_dir,
        ]);
        let list = String::from_utf8_lossy(&out.stdout).into_owned();
        let _ = fs::write(self.artifacts.join("images-list.txt"), &list);
        assert!(
            out.status.success()
                && list.contains(TALOS_VERSION)
                && list.contains(&kernel_sha[..12]),
            "`bootplane images list` does not show the added assets:\n{list}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Creates `bpe2e-<pid>-<tag>` with loopback up and IPv6 DAD off.
    fn namespace(&mut self, tag: &str) -> String {
        let ns = format!("{NS_PREFIX}{}-{tag}", std::process::id());
        run(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        // A tentative (DAD) IPv6 address holds back router advertisements.
        run(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ]);
        ns
    }

    /// `br0` with STP off and no forward delay, so a new tap forwards at once.
    fn bridge(&mut self, ns: &str, cidr: &str) {
        run(&[
            "ip",
            "-n",
            ns,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ]);
        run(&[
            "ip",
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv6.conf.br0.accept_dad=0",
        ]);
        run(&["ip", "-n", ns, "addr", "add", cidr, "dev", "br0"]);
        run(&["ip", "-n", ns, "link", "set", "br0", "up"]);
    }

    fn tap(&mut self, ns: &str) -> String {
        let tap = format!("tap{}", self.taps);
        self.taps += 1;
        run(&["ip", "-n", ns, "tuntap", "add", "dev", &tap, "mode", "tap"]);
        run(&["ip", "-n", ns, "link", "set", &tap, "master", "br0", "up"]);
        tap
    }

    /// The site's own router in namespace `router`, joined to `ns`'s bridge by a veth: a plain
    /// DHCP server (dnsmasq, dynamic range, no PXE options) that also sends IPv6 router
    /// advertisements on a ULA prefix, as an ordinary router would (without an RA iPXE waits
    /// ~16 s for IPv6).
    fn site_router(&mut self, ns: &str, router: &str) {
        run(&[
            "ip", "-n", ns, "link", "add", "vrouter", "type", "veth", "peer", "name", "eth0",
            "netns", router,
        ]);
        run(&[
            "ip", "-n", ns, "link", "set", "vrouter", "master", "br0", "up",
        ]);
        run(&[
            "ip",
            "netns",
            "exec",
            router,
            "sysctl",
            "-qw",
            "net.ipv6.conf.eth0.accept_dad=0",
        ]);
        run(&[
            "ip",
            "-n",
            router,
            "addr",
            "add",
            "10.78.0.1/24",
            "dev",
            "eth0",
        ]);
        run(&[
            "ip",
            "-n",
            router,
            "addr",
            "add",
            "fd78::1/64",
            "dev",
            "eth0",
        ]);
        run(&["ip", "-n", router, "link", "set", "eth0", "up"]);
        let leases = self.scratch.path().join("router.leases");
        let args = [
            "--keep-in-foreground".to_owned(),
            "--conf-file=/dev/null".to_owned(),
            "--port=0".to_owned(),
            "--user=root".to_owned(),
            "--pid-file".to_owned(),
            "--interface=eth0".to_owned(),
            "--bind-interfaces".to_owned(),
            "--dhcp-range=10.78.0.100,10.78.0.150,255.255.255.0,1h".to_owned(),
            "--dhcp-option=option:router,10.78.0.1".to_owned(),
            "--dhcp-range=fd78::,ra-only".to_owned(),
            "--enable-ra".to_owned(),
            "--ra-param=eth0,10,0".to_owned(),
            format!("--dhcp-leasefile={}", leases.display()),
            "--log-dhcp".to_owned(),
            "--log-facility=-".to_owned(),
        ];
        let mut argv = vec!["dnsmasq"];
        argv.extend(args.iter().map(String::as_str));
        self.spawn_in(router, "router-dnsmasq", &argv);
    }

    fn register(&mut self, vm: &Vm, lan: &Lan) {
        let ip = format!("{}/24", vm.ip);
        let role = match vm.role {
            Role::Controlplane => "controlplane",
            Role::Worker => "worker",
        };
        let data_dir = self.data_dir.display().to_string();
        let mut args = vec![
            "machines",
            "add",
            "--data-dir",
            &data_dir,
            "--mac",
            vm.mac,
            "--role",
            role,
            "--hostname",
            vm.hostname,
            "--ip",
            &ip,
            "--gateway",
            lan.gateway,
        ];
        if let Some(dns) = lan.dns {
            args.extend(["--dns", dns]);
        }
        let out = self.cli(&args);
        assert!(
            out.status.success(),
            "bootplane {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts a Talos double for every VM on its static address (namespace `nodes`, joined
    /// to the bridge), then checks that every machine becomes ready and exactly one Bootstrap
    /// reaches exactly one node: the control plane at `target`.
    fn talos_nodes_report_in_and_bootstrap_once(
        &mut self,
        ns: &str,
        vms: &[Vm],
        target: &str,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        let nodes = self.namespace("nodes");
        run(&[
            "ip", "-n", ns, "link", "add", "vnodes", "type", "veth", "peer", "name", "eth0",
            "netns", &nodes,
        ]);
        run(&[
            "ip", "-n", ns, "link", "set", "vnodes", "master", "br0", "up",
        ]);
        for vm in vms {
            let cidr = format!("{}/24", vm.ip);
            run(&["ip", "-n", &nodes, "addr", "add", &cidr, "dev", "eth0"]);
        }
        run(&["ip", "-n", &nodes, "link", "set", "eth0", "up"]);
        // The VMs answered ARP for these addresses a moment ago; forget their MACs.
        run(&["ip", "-n", ns, "neigh", "flush", "all"]);
        let secrets = self.scratch.path().join("secrets.yaml");
        let data_dir = self.data_dir.display().to_string();
        let out = self.cli(&[
            "cluster",
            "export-secrets",
            "--data-dir",
            &data_dir,
            "--out",
            &secrets.display().to_string(),
        ]);
        assert!(out.status.success(), "export-secrets: {out:?}");
        let etcd = self.artifacts.join("talos-etcd.json");
        let double = env!("CARGO_BIN_EXE_bootplane-talos-double");
        let started = Instant::now();
        for vm in vms {
            let role = match vm.role {
                Role::Controlplane => "controlplane",
                Role::Worker => "worker",
            };
            let listen = format!("{}:50000", vm.ip);
            let state = self.artifacts.join(format!("talos-{}.json", vm.hostname));
            let argv = [
                double,
                "--listen",
                &listen,
                "--secrets",
                &secrets.display().to_string(),
                "--hostname",
                vm.hostname,
                "--role",
                role,
                "--state",
                &state.display().to_string(),
                "--etcd-cluster",
                &etcd.display().to_string(),
                "--auto-join",
            ];
            self.spawn_in(&nodes, &format!("talos-{}", vm.hostname), &argv);
        }

        // Every machine must become ready through its Talos API.
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut bootstrapped = false;
        while Instant::now() < deadline {
            let out = self.cli(&["cluster", "bootstrap", "--data-dir", &data_dir, "--json"]);
            let text = String::from_utf8_lossy(&out.stdout);
            if text.contains("\"outcome\": \"bootstrapped\"") {
                bootstrapped = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let waited = started.elapsed().as_secs_f64();
        let out = self.cli(&["cluster", "bootstrap", "--data-dir", &data_dir, "--json"]);
        let status = String::from_utf8_lossy(&out.stdout).into_owned();
        let _ = fs::write(self.artifacts.join("bootstrap.json"), &status);
        if !bootstrapped {
            problems.push(format!(
                "no bootstrap within 90 s of the Talos nodes starting: {status}"
            ));
            return problems;
        }
        eprintln!(
            "[{}] bootstrapped {waited:.1} s after the Talos nodes started",
            self.test
        );
        if !status.contains(&format!("\"target_ip\": \"{target}\"")) {
            problems.push(format!("bootstrap target is not {target}: {status}"));
        }
        // Let any second call show itself before counting.
        std::thread::sleep(Duration::from_secs(3));
        let mut calls = Vec::new();
        for vm in vms {
            let state = self.artifacts.join(format!("talos-{}.json", vm.hostname));
            let text = fs::read_to_string(&state).unwrap_or_default();
            let count = text.matches("\"method\":\"Bootstrap\"").count()
                + text.matches("\"method\": \"Bootstrap\"").count();
            if count > 0 {
                calls.push(format!("{} ({}): {count}", vm.hostname, vm.ip));
            }
        }
        if calls.len() != 1 || !calls[0].contains(&format!("({target}): 1")) {
            problems.push(format!(
                "expected exactly one Bootstrap, on {target}; got: {calls:?}"
            ));
        }
        // A worker takes no part in the bootstrap: it reports in when the appliance's probe
        // of its Talos API next comes round (backing off to 30 s while the node is down).
        let deadline = Instant::now() + Duration::from_secs(45);
        let (list, ready) = loop {
            let out = self.cli(&["machines", "list", "--data-dir", &data_dir, "--json"]);
            let list = String::from_utf8_lossy(&out.stdout).into_owned();
            let ready = list.matches("\"state\": \"ready\"").count();
            if ready == vms.len() || Instant::now() > deadline {
                break (list, ready);
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        let _ = fs::write(self.artifacts.join("machines-after.json"), &list);
        if ready != vms.len() {
            problems.push(format!(
                "{ready} of {} machines are ready: {list}",
                vms.len()
            ));
        }
        for vm in vms {
            let out = self.cli(&[
                "machines",
                "events",
                "--data-dir",
                &data_dir,
                "--mac",
                vm.mac,
                "--json",
            ]);
            let events = String::from_utf8_lossy(&out.stdout);
            if !events.contains("\"reported-in\"") {
                problems.push(format!("{}: no reported-in event", vm.name));
            }
        }
        problems
    }

    /// `bootplane cluster init` with `vip` as the API endpoint, so machines get real configs.
    fn init_cluster(&mut self, vip: &str) {
        let data_dir = self.data_dir.display().to_string();
        let args = [
            "cluster",
            "init",
            "--data-dir",
            &data_dir,
            "--name",
            "lab",
            "--vip",
            vip,
            "--talos-version",
            TALOS_VERSION,
        ];
        let out = self.cli(&args);
        assert!(
            out.status.success(),
            "bootplane {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts `bootplane serve` inside `ns` on br0 and waits for /healthz.
    fn serve(&mut self, ns: &str, advertise_ip: &str, dhcp_args: &[&str]) {
        let data_dir = self.data_dir.display().to_string();
        let images_dir = self.images_dir.display().to_string();
        let port = HTTP_PORT.to_string();
        let mut argv = vec![
            kit::BIN,
            "serve",
            "--data-dir",
            &data_dir,
            "--interface",
            "br0",
            "--advertise-ip",
            advertise_ip,
            "--http-port",
            &port,
            "--ipxe-dir",
            IPXE_DIR,
            "--images-dir",
            &images_dir,
            "--talos-version",
            TALOS_VERSION,
        ];
        argv.extend_from_slice(dhcp_args);
        let index = self.spawn_in(ns, "bootplane", &argv);
        self.bootplane = Some(index);
        self.http_base = format!("http://{advertise_ip}:{HTTP_PORT}");

        let healthz = format!("{}/healthz", self.http_base);
        let started = Instant::now();
        loop {
            if let Some(status) = self.procs[index].child.try_wait().unwrap() {
                panic!(
                    "bootplane serve exited ({status}) before /healthz answered; log:\n{}",
                    tail(&self.artifacts.join("bootplane.log"), 40)
                );
            }
            // The server lives in the namespace, so probe from inside it.
            let probe = run_timeout(
                &[
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "busybox",
                    "wget",
                    "-q",
                    "-O",
                    "/dev/null",
                    &healthz,
                ],
                Duration::from_secs(5),
            );
            if probe.is_some_and(|out| out.status.success()) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "GET {healthz} did not answer 200 within 30 s; bootplane log:\n{}",
                tail(&self.artifacts.join("bootplane.log"), 40)
            );
            sleep(Duration::from_millis(200));
        }
        // The assets came in through `images add`, so start-up verified recorded files and
        // adopted nothing found on disk.
        let log = fs::read_to_string(self.artifacts.join("bootplane.log")).unwrap_or_default();
        assert!(
            !log.contains("found without a record"),
            "bootplane adopted unrecorded boot assets; log:\n{}",
            tail(&self.artifacts.join("bootplane.log"), 40)
        );
        println!(
            "[{}] bootplane up after {:.1} s",
            self.test,
            started.elapsed().as_secs_f64()
        );
    }

    /// Starts `bootplane serve` in `ns` as the LAN's DHCP server: the appliance at `lan`'s
    /// gateway, which is also the router and nameserver it hands out, leases from `pool`.
    fn serve_full_dhcp(&mut self, ns: &str, lan: &Lan, pool: &str) {
        let dns = lan.dns.unwrap_or(lan.gateway);
        self.serve(
            ns,
            lan.gateway,
            &[
                "--dhcp-mode",
                "full",
                "--dhcp-subnet",
                lan.subnet,
                "--dhcp-pool",
                pool,
                "--dhcp-router",
                lan.gateway,
                "--dhcp-dns",
                dns,
            ],
        );
    }

    /// Boots all VMs at once and waits for each one's marker or failure.
    fn boot_all(&mut self, ns: &str, vms: &[Vm]) -> Vec<Outcome> {
        let accel = accelerator();
        let mut running = Vec::new();
        let started = Instant::now();
        for (i, vm) in vms.iter().enumerate() {
            let tap = self.tap(ns);
            let netdev = match self.impair {
                None => format!("tap,id=net0,ifname={tap},script=no,downscript=no"),
                Some(profile) => {
                    let link = impair::Impairer::start(ns, &tap, profile, 0x5eed + i as u64)
                        .unwrap_or_else(|e| panic!("starting the bad link for {}: {e}", vm.name));
                    let netdev = link.netdev("net0");
                    self.impairers.push((vm.name, link));
                    netdev
                }
            };
            let serial = self.artifacts.join(format!("{}.serial", vm.name));
            let argv = self.qemu_argv(i, vm, &netdev, &serial, accel);
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let index = self.spawn_in(ns, &format!("qemu-{}", vm.name), &argv);
            running.push((index, serial));
        }

        let mut outcomes: Vec<Option<Outcome>> = vms.iter().map(|_| None).collect();
        let mut marker_seen: Vec<Option<Instant>> = vms.iter().map(|_| None).collect();
        while outcomes.iter().any(Option::is_none) {
            let bootplane_exit = self
                .bootplane
                .and_then(|i| self.procs[i].child.try_wait().unwrap());
            for i in 0..vms.len() {
                if outcomes[i].is_some() {
                    continue;
                }
                let (index, serial_path) = &running[i];
                let exited = self.procs[*index].child.try_wait().unwrap();
                let serial = fs::read(serial_path)
                    .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                    .unwrap_or_default();
                let elapsed = started.elapsed();
                if let Some(marker) = parse_marker(&serial, elapsed.as_secs_f64()) {
                    let seen = *marker_seen[i].get_or_insert_with(Instant::now);
                    // Give the stand-in a moment to print its hostname line and power off.
                    if exited.is_some() || seen.elapsed() > Duration::from_secs(3) {
                        let mut marker = marker;
                        marker.seconds = (seen - started).as_secs_f64();
                        outcomes[i] = Some(Outcome::Marker(marker));
                    }
                    continue;
                }
                let failure = if let Some(reason) = failure_in(&serial) {
                    Some(format!(
                        "failure on serial console after {:.1} s: {reason}",
                        elapsed.as_secs_f64()
                    ))
                } else if let Some(status) = exited {
                    Some(format!(
                        "qemu exited ({status}) after {:.1} s without a marker",
                        elapsed.as_secs_f64()
                    ))
                } else if let Some(status) = bootplane_exit {
                    Some(format!(
                        "bootplane exited ({status}) while the VM was booting"
                    ))
                } else if elapsed > self.deadline {
                    Some(format!("no marker within {} s", self.deadline.as_secs()))
                } else {
                    None
                };
                if let Some(reason) = failure {
                    let _ = self.procs[*index].child.kill();
                    let _ = self.procs[*index].child.wait();
                    outcomes[i] = Some(Outcome::Failed(format!(
                        "{reason}\n--- last lines of {}:\n{}",
                        serial_path.display(),
                        tail(serial_path, 25)
                    )));
                }
            }
            sleep(Duration::from_millis(250));
        }
        let outcomes: Vec<Outcome> = outcomes.into_iter().map(Option::unwrap).collect();
        for (vm, outcome) in vms.iter().zip(&outcomes) {
            match outcome {
                Outcome::Marker(m) => {
                    println!(
                        "[{}] {} ({:?}): marker at {:.1} s: {}",
                        self.test, vm.name, vm.firmware, m.seconds, m.line
                    );
                }
                Outcome::Failed(reason) => {
                    println!(
                        "[{}] {} ({:?}): FAILED: {}",
                        self.test,
                        vm.name,
                        vm.firmware,
                        first_line(reason)
                    );
                }
            }
        }
        println!(
            "[{}] all VMs done after {:.1} s",
            self.test,
            started.elapsed().as_secs_f64()
        );
        outcomes
    }

    /// QEMU's command line; `netdev` is the NIC's `-netdev` value (a tap, or a bad link's UDP).
    fn qemu_argv(
        &self,
        i: usize,
        vm: &Vm,
        netdev: &str,
        serial: &Path,
        accel: &str,
    ) -> Vec<String> {
        let machine = match vm.firmware {
            Firmware::SeaBios => "pc",
            Firmware::OvmfPxe => "q35",
        };
        let mut argv: Vec<String> = [
            "qemu-system-x86_64",
            "-name",
            &format!("bpe2e-{}", vm.name),
            "-machine",
            &format!("{machine},accel={accel},graphics=off"),
            "-m",
            "512",
            "-smp",
            "1",
            "-uuid",
            &format!("7e57ab1e-0000-4000-8000-{:012x}", i + 1),
            "-nodefaults",
            "-display",
            "none",
            "-vga",
            "none",
            "-no-reboot",
            "-serial",
            &format!("file:{}", serial.display()),
            "-netdev",
            netdev,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        match vm.firmware {
            Firmware::SeaBios => {
                argv.push("-device".into());
                argv.push(format!(
                    "virtio-net-pci,netdev=net0,mac={},bootindex=1",
                    vm.mac
                ));
            }
            Firmware::OvmfPxe => {
                let vars = self.scratch.path().join(format!("{}.vars.fd", vm.name));
                fs::copy(OVMF_VARS, &vars).unwrap();
                argv.extend([
                    "-drive".into(),
                    format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
                    "-drive".into(),
                    format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
                    "-device".into(),
                    // `romfile=` empty: no iPXE ROM, OVMF's own PXE boots.
                    format!(
                        "virtio-net-pci,netdev=net0,mac={},bootindex=1,romfile=",
                        vm.mac
                    ),
                ]);
            }
        }
        argv
    }

    /// Everything one VM must show; returns the problems found.
    fn check_vm(&mut self, vm: &Vm, outcome: &Outcome, mode: DhcpMode, lan: &Lan) -> Vec<String> {
        let mut problems = Vec::new();
        let marker = match outcome {
            Outcome::Marker(marker) => Some(marker),
            Outcome::Failed(reason) => {
                problems.push(format!(
                    "{} ({:?}, {}): {reason}",
                    vm.name, vm.firmware, vm.mac
                ));
                None
            }
        };
        if let Some(m) = marker {
            if m.mac != vm.mac {
                problems.push(format!(
                    "{}: marker mac={} but the VM's MAC is {}",
                    vm.name, m.mac, vm.mac
                ));
            }
            match m.config_status.as_deref() {
                Some("200") => {}
                other => problems.push(format!(
                    "{}: config_status={other:?}: GET talos.config= did not return the machine's config (marker: {})",
                    vm.name, m.line
                )),
            }
            if mode == DhcpMode::Full && m.ip != vm.ip {
                problems.push(format!(
                    "{}: booted OS leased ip={} but the machine is registered with {}",
                    vm.name, m.ip, vm.ip
                ));
            }
        }
        // A VM that failed to boot gets no grace period for late events.
        let (events_problems, events) = self.check_events(vm, mode, marker.is_some());
        problems.extend(events_problems);
        if let (Some(m), Some(events)) = (marker, events) {
            problems.extend(self.check_fetched_config(vm, m, &events, lan));
        }
        problems
    }

    /// The config the stand-in fetched is the one bootplane served to this MAC (its SHA-256 in
    /// the `config-fetched` event) and the one `bootplane cluster config --mac` renders for it;
    /// those bytes are then judged document by document (`judge_config`).
    fn check_fetched_config(
        &mut self,
        vm: &Vm,
        m: &Marker,
        events: &serde_json::Value,
        lan: &Lan,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        let Some(sha) = m
            .config_sha256
            .as_deref()
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        else {
            return vec![format!(
                "{}: the stand-in printed no SHA-256 of its config (marker: {})",
                vm.name, m.line
            )];
        };
        let served: Vec<&str> = events
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e.get("kind").and_then(serde_json::Value::as_str) == Some("config-fetched"))
            .filter_map(|e| e.get("detail")?.as_str())
            .collect();
        let bytes = m.config_bytes.as_deref().unwrap_or("?");
        let want = format!("served {bytes} bytes sha256:{sha}");
        if !served.contains(&want.as_str()) {
            problems.push(format!(
                "{}: the stand-in fetched {bytes} bytes with sha256 {sha}, but bootplane's \
                 config-fetched events for {} say {served:?}",
                vm.name, vm.mac
            ));
        }
        let data_dir = self.data_dir.display().to_string();
        let args = [
            "cluster",
            "config",
            "--data-dir",
            &data_dir,
            "--mac",
            vm.mac,
        ];
        let out = self.cli(&args);
        if !out.status.success() {
            problems.push(format!(
                "{}: `bootplane {}` failed ({}): {}",
                vm.name,
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            return problems;
        }
        let _ = fs::write(
            self.artifacts.join(format!("{}.config.yaml", vm.name)),
            &out.stdout,
        );
        let rendered = {
            use sha2::Digest as _;
            hex::encode(sha2::Sha256::digest(&out.stdout))
        };
        if rendered != sha {
            problems.push(format!(
                "{}: the stand-in fetched sha256 {sha}, `bootplane cluster config --mac {}` \
                 renders sha256 {rendered} (saved as {}.config.yaml)",
                vm.name, vm.mac, vm.name
            ));
            return problems;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let docs = match config_documents(&text) {
            Ok(docs) => docs,
            Err(e) => {
                problems.push(format!("{}: the fetched config is no YAML: {e}", vm.name));
                return problems;
            }
        };
        let kinds: Vec<String> = docs
            .iter()
            .skip(1)
            .map(|d| d["kind"].as_str().unwrap_or("?").to_owned())
            .collect();
        if m.kinds.as_ref() != Some(&kinds) {
            problems.push(format!(
                "{}: the stand-in saw documents {:?}, the config has {kinds:?}",
                vm.name, m.kinds
            ));
        }
        problems.extend(judge_config(vm, lan, &docs));
        problems
    }

    /// `bootplane machines events --mac MAC --json` must show the boot chain in order; returns
    /// the problems and the events last read.
    fn check_events(
        &mut self,
        vm: &Vm,
        mode: DhcpMode,
        booted: bool,
    ) -> (Vec<String>, Option<serde_json::Value>) {
        let dhcp: &[&str] = match mode {
            DhcpMode::Full => &["dhcp-ack"],
            DhcpMode::Proxy => &["proxy-offer", "proxy-ack"],
        };
        let mut chain: Vec<&[&str]> = vec![dhcp];
        if vm.firmware == Firmware::OvmfPxe {
            chain.push(&["tftp-served"]);
        }
        chain.extend([
            &["script-served"][..],
            &["kernel-fetched"][..],
            &["initramfs-fetched"][..],
            &["config-fetched"][..],
        ]);

        let data_dir = self.data_dir.display().to_string();
        let args = [
            "machines",
            "events",
            "--data-dir",
            &data_dir,
            "--mac",
            vm.mac,
            "--json",
        ];
        let artifact = self.artifacts.join(format!("{}.events.json", vm.name));
        // Events may be written just after the response that caused them.
        let grace = if booted {
            Duration::from_secs(5)
        } else {
            Duration::ZERO
        };
        let deadline = Instant::now() + grace;
        loop {
            let out = self.cli(&args);
            let _ = fs::write(&artifact, &out.stdout);
            let (verdict, events) = if out.status.success() {
                let text = String::from_utf8_lossy(&out.stdout);
                match serde_json::from_str::<serde_json::Value>(&text) {
                    Ok(value) => (judge_events(vm, &value, &chain), Some(value)),
                    Err(e) => (
                        vec![format!(
                            "{}: `bootplane {}` printed invalid JSON ({e}): {text}",
                            vm.name,
                            args.join(" ")
                        )],
                        None,
                    ),
                }
            } else {
                let problem = format!(
                    "{}: `bootplane {}` failed ({}): {}",
                    vm.name,
                    args.join(" "),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                (vec![problem], None)
            };
            if verdict.is_empty() || Instant::now() > deadline {
                return (verdict, events);
            }
            sleep(Duration::from_millis(500));
        }
    }

    /// The appliance's `/metrics`, fetched from inside `ns`.
    fn metrics(&self, ns: &str) -> String {
        let url = format!("{}/metrics", self.http_base);
        run_timeout(
            &[
                "ip", "netns", "exec", ns, "busybox", "wget", "-q", "-O", "-", &url,
            ],
            Duration::from_secs(10),
        )
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default()
    }

    /// TCP segments the appliance's network namespace has sent again (`RetransSegs`).
    fn tcp_retransmitted(&self) -> Option<u64> {
        let pid = self.procs[self.bootplane?].child.id();
        let snmp = fs::read_to_string(format!("/proc/{pid}/net/snmp")).ok()?;
        let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
        let (names, values) = (tcp.next()?, tcp.next()?);
        let at = names.split_whitespace().position(|n| n == "RetransSegs")?;
        values.split_whitespace().nth(at)?.parse().ok()
    }

    /// Fails the test with every problem found, after saving `machines list --json`.
    fn finish(&mut self, problems: Vec<String>) {
        let data_dir = self.data_dir.display().to_string();
        let list = self.cli(&["machines", "list", "--data-dir", &data_dir, "--json"]);
        let _ = fs::write(self.artifacts.join("machines.json"), &list.stdout);
        if problems.is_empty() {
            println!(
                "[{}] passed; artifacts in {}",
                self.test,
                self.artifacts.display()
            );
            return;
        }
        let mut report = format!("{} problem(s):\n", problems.len());
        for p in &problems {
            let _ = writeln!(report, "- {p}");
        }
        let _ = writeln!(
            report,
            "--- last lines of bootplane.log:\n{}\n(artifacts: {})",
            tail(&self.artifacts.join("bootplane.log"), 40),
            self.artifacts.display()
        );
        panic!("{report}");
    }

    /// Runs the CLI (outside the namespace: it only needs the data dir).
    fn cli(&self, args: &[&str]) -> Output {
        let mut argv = vec![kit::BIN];
        argv.extend_from_slice(args);
        run_timeout(&argv, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("`bootplane {}` did not finish within 30 s", args.join(" ")))
    }

    /// Starts a long-running process inside `ns`, output to `<artifacts>/<name>.log`.
    /// `ip netns exec` execs the program, so the child's pid is the program's pid.
    fn spawn_in(&mut self, ns: &str, name: &str, argv: &[&str]) -> usize {
        let log = fs::File::create(self.artifacts.join(format!("{name}.log"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name} ({}): {e}", argv.join(" ")));
        let _ = fs::write(
            self.artifacts.join(format!("{name}.cmdline")),
            argv.join(" ") + "\n",
        );
        self.procs.push(Proc {
            name: name.to_owned(),
            child,
        });
        self.procs.len() - 1
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // VMs first (SIGKILL), then the servers (SIGTERM, then SIGKILL), all by pid.
        for proc in self.procs.iter_mut().rev() {
            if matches!(proc.child.try_wait(), Ok(Some(_))) {
                continue;
            }
            if proc.name.starts_with("qemu-") {
                let _ = proc.child.kill();
                let _ = proc.child.wait();
                continue;
            }
            let pid = proc.child.id().to_string();
            let _ = Command::new("kill")
                .args(["-TERM", &pid])
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(proc.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                sleep(Duration::from_millis(50));
            }
            if matches!(proc.child.try_wait(), Ok(None)) {
                eprintln!(
                    "[{}] {} (pid {pid}) ignored SIGTERM for 5 s; killing",
                    self.test, proc.name
                );
                let _ = proc.child.kill();
                let _ = proc.child.wait();
            }
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Judges one machine's event log (a JSON array of {mac, at, kind, detail}, oldest first).
fn judge_events(vm: &Vm, value: &serde_json::Value, chain: &[&[&str]]) -> Vec<String> {
    let Some(events) = value.as_array() else {
        return vec![format!("{}: events output is not a JSON array", vm.name)];
    };
    let mut problems = Vec::new();
    let kinds: Vec<&str> = events
        .iter()
        .filter_map(|e| e.get("kind")?.as_str())
        .collect();
    for event in events {
        let mac = event
            .get("mac")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("<none>");
        if mac != vm.mac {
            problems.push(format!(
                "{}: events for {} include one with mac {mac}",
                vm.name, vm.mac
            ));
            break;
        }
    }
    let missing: Vec<String> = chain
        .iter()
        .filter(|step| !kinds.iter().any(|k| step.contains(k)))
        .map(|step| step.join("|"))
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{}: event log for {} lacks {}; it has [{}]",
            vm.name,
            vm.mac,
            missing.join(", "),
            kinds.join(", ")
        ));
        return problems;
    }
    // In order: each step after the previous one.
    let expected: Vec<String> = chain.iter().map(|step| step.join("|")).collect();
    let mut from = 0;
    let mut previous: Option<(usize, &str)> = None;
    for (n, step) in chain.iter().enumerate() {
        match kinds[from..].iter().position(|k| step.contains(k)) {
            Some(at) => {
                previous = Some((from + at, kinds[from + at]));
                from += at + 1;
            }
            None => {
                let after = match previous {
                    Some((index, kind)) => format!("after {kind} (event #{})", index + 1),
                    None => "at all".to_owned(),
                };
                let before = match n {
                    0 => String::new(),
                    _ => format!(", or no {} before it", expected[n - 1]),
                };
                problems.push(format!(
                    "{}: event log for {} is out of order: no {} {after}{before}; \
                     expected {}; it has [{}]",
                    vm.name,
                    vm.mac,
                    expected[n],
                    expected.join(" -> "),
                    kinds.join(", ")
                ));
                break;
            }
        }
    }
    problems
}

/// Every VM that fetched a config fetched a different one (each is rendered for its MAC).
fn configs_are_distinct(vms: &[Vm], outcomes: &[Outcome]) -> Vec<String> {
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    let mut problems = Vec::new();
    for (vm, outcome) in vms.iter().zip(outcomes) {
        let Outcome::Marker(m) = outcome else {
            continue;
        };
        let Some(sha) = m.config_sha256.as_deref().filter(|s| *s != "none") else {
            continue;
        };
        if let Some(other) = seen.insert(sha, vm.name) {
            problems.push(format!(
                "{} and {other} fetched the same config (sha256 {sha})",
                vm.name
            ));
        }
    }
    problems
}

/// A rendered config's YAML documents, in order.
fn config_documents(text: &str) -> Result<Vec<serde_json::Value>, String> {
    use serde::Deserialize as _;
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| serde_json::Value::deserialize(doc).map_err(|e| e.to_string()))
        .collect()
}

/// Talos's v1.13.9 schema, with a validator per document: `v1alpha1` for the machine config,
/// and each kind the schema's `oneOf` lists against its own definition (clearer errors than
/// the whole `oneOf`).
struct TalosSchema {
    root: serde_json::Value,
}

impl TalosSchema {
    fn load() -> TalosSchema {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(TALOS_SCHEMA);
        let text =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        TalosSchema {
            root: serde_json::from_str(&text).unwrap(),
        }
    }

    /// The `$defs` entry describing `kind` (`None`: the v1alpha1 config).
    fn definition(&self, kind: Option<&str>) -> Option<String> {
        let Some(kind) = kind else {
            return Some("v1alpha1.Config".to_owned());
        };
        self.root["$defs"]
            .as_object()?
            .iter()
            .find_map(|(name, def)| {
                def.pointer("/properties/kind/enum")?
                    .as_array()?
                    .iter()
                    .any(|k| k == kind)
                    .then(|| name.clone())
            })
    }

    /// Why `doc` is not a valid document of this line. Talos's schema does not describe
    /// `persist` (Talos's own schema test removes it too), which must then be true.
    fn errors(&self, doc: &serde_json::Value) -> Vec<String> {
        let mut doc = doc.clone();
        let kind = doc
            .get("kind")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned);
        if kind.is_none() {
            if let Some(persist) = doc.as_object_mut().and_then(|o| o.remove("persist")) {
                if persist != serde_json::Value::Bool(true) {
                    return vec![format!("persist is {persist}, Talos requires true")];
                }
            }
        }
        let Some(definition) = self.definition(kind.as_deref()) else {
            let kind = kind.unwrap_or_default();
            return vec![format!("Talos {TALOS_VERSION} has no {kind} document")];
        };
        let mut schema = self.root.clone();
        let obj = schema.as_object_mut().unwrap();
        obj.remove("oneOf");
        obj.insert(
            "$ref".into(),
            serde_json::Value::String(format!("#/$defs/{definition}")),
        );
        let validator = jsonschema::validator_for(&schema).unwrap();
        validator
            .iter_errors(&doc)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect()
    }
}

/// Judges the documents of the config `vm` fetched: each valid against Talos v1.13.9's schema,
/// the v1alpha1 config first and without `machine.network` (gone in 1.13), and the machine's
/// own values as Talos 1.12+ documents: `HostnameConfig`, a `LinkAliasConfig` selecting its MAC,
/// that link's `LinkConfig` with its address and default route, a `Layer2VIPConfig` with the
/// VIP on control planes only, and a `ResolverConfig` with the registered nameservers.
fn judge_config(vm: &Vm, lan: &Lan, docs: &[serde_json::Value]) -> Vec<String> {
    use serde_json::json;
    let mut problems = Vec::new();
    let mut problem = |what: String| problems.push(format!("{}: config {what}", vm.name));
    let schema = TalosSchema::load();
    for (i, doc) in docs.iter().enumerate() {
        let errors = schema.errors(doc);
        if !errors.is_empty() {
            problem(format!(
                "document {} ({}) is invalid for Talos {TALOS_VERSION}: {}",
                i + 1,
                doc["kind"].as_str().unwrap_or("v1alpha1"),
                errors.join("; ")
            ));
        }
    }
    let Some(v1alpha1) = docs.first().filter(|d| d["version"] == "v1alpha1") else {
        problem("does not start with the v1alpha1 document".into());
        return problems;
    };
    let role = match vm.role {
        Role::Controlplane => "controlplane",
        Role::Worker => "worker",
    };
    if v1alpha1["machine"]["type"] != role {
        problem(format!(
            "has machine.type {}, the machine is a {role}",
            v1alpha1["machine"]["type"]
        ));
    }
    if let Some(network) = v1alpha1["machine"].get("network") {
        problem(format!(
            "still has machine.network (gone in 1.13): {network}"
        ));
    }
    let of_kind = |kind: &str| -> Vec<&serde_json::Value> {
        docs.iter().filter(|d| d["kind"] == kind).collect()
    };
    let one = |kind: &str| match of_kind(kind)[..] {
        [doc] => Ok(doc),
        ref found => Err(format!("has {} {kind} documents, not one", found.len())),
    };
    match one("HostnameConfig") {
        Ok(doc) if doc["hostname"] == vm.hostname => {}
        Ok(doc) => problem(format!(
            "names the host {}, registered hostname is {}",
            doc["hostname"], vm.hostname
        )),
        Err(e) => problem(e),
    }
    let alias = match one("LinkAliasConfig") {
        Ok(doc) => {
            let want = format!("mac(link.permanent_addr) == \"{}\"", vm.mac);
            if doc["selector"]["match"] != want.as_str() {
                problem(format!(
                    "aliases the link {}, not the one with the VM's MAC ({want})",
                    doc["selector"]
                ));
            }
            doc["name"].as_str()
        }
        Err(e) => {
            problem(e);
            None
        }
    };
    match one("LinkConfig") {
        Ok(doc) => {
            if doc["name"].as_str() != alias {
                problem(format!(
                    "configures link {}, the booting NIC's alias is {alias:?}",
                    doc["name"]
                ));
            }
            let address = json!([{ "address": format!("{}/24", vm.ip) }]);
            if doc["addresses"] != address {
                problem(format!(
                    "gives the link {}, registered address is {}/24",
                    doc["addresses"], vm.ip
                ));
            }
            let route = json!({ "destination": "0.0.0.0/0", "gateway": lan.gateway });
            if !doc["routes"]
                .as_array()
                .is_some_and(|routes| routes.contains(&route))
            {
                problem(format!(
                    "has routes {}, no default route via {}",
                    doc["routes"], lan.gateway
                ));
            }
        }
        Err(e) => problem(e),
    }
    match (vm.role, one("Layer2VIPConfig")) {
        (Role::Controlplane, Ok(doc)) => {
            if doc["name"] != lan.vip || doc["link"].as_str() != alias {
                problem(format!(
                    "has VIP {} on link {}, the cluster's VIP is {} on {alias:?}",
                    doc["name"], doc["link"], lan.vip
                ));
            }
        }
        (Role::Controlplane, Err(e)) => problem(e),
        (Role::Worker, _) => {
            if !of_kind("Layer2VIPConfig").is_empty() {
                problem("of a worker has a Layer2VIPConfig (control planes only)".into());
            }
        }
    }
    if let Some(dns) = lan.dns {
        match one("ResolverConfig") {
            Ok(doc) if doc["nameservers"] == json!([{ "address": dns }]) => {}
            Ok(doc) => problem(format!(
                "has nameservers {}, registered are [{dns}]",
                doc["nameservers"]
            )),
            Err(e) => problem(e),
        }
    }
    if let Some(appliance) = lan.appliance {
        let sink = format!("{appliance}:{}", bootplane::config::DEFAULT_EVENTS_PORT);
        match one("EventSinkConfig") {
            Ok(doc) if doc["endpoint"] == sink.as_str() => {}
            Ok(doc) => problem(format!("sends events to {}, not {sink}", doc["endpoint"])),
            Err(e) => problem(e),
        }
        let log = format!(
            "tcp://{appliance}:{}",
            bootplane::config::DEFAULT_KERNEL_LOG_PORT
        );
        match one("KmsgLogConfig") {
            Ok(doc) if doc["url"] == log.as_str() && doc["name"] == "bootplane" => {}
            Ok(doc) => problem(format!("sends its kernel log to {doc}, not {log}")),
            Err(e) => problem(e),
        }
    }
    problems.extend(
        cluster_subnets(vm, lan, v1alpha1)
            .into_iter()
            .map(|p| format!("{}: config {p}", vm.name)),
    );
    problems
}

/// With more than one address on a node, etcd and the kubelet pick the cluster's subnet only
/// if told: `machine.kubelet.nodeIP.validSubnets` (every node) and
/// `cluster.etcd.advertisedSubnets` (control planes): each must be exactly the machines' subnet.
fn cluster_subnets(vm: &Vm, lan: &Lan, v1alpha1: &serde_json::Value) -> Vec<String> {
    let want = serde_json::json!([lan.subnet]);
    let mut problems = Vec::new();
    let mut pointers = vec!["/machine/kubelet/nodeIP/validSubnets"];
    if matches!(vm.role, Role::Controlplane) {
        pointers.push("/cluster/etcd/advertisedSubnets");
    }
    for pointer in pointers {
        match v1alpha1.pointer(pointer) {
            Some(value) if *value == want => {}
            Some(value) => problems.push(format!(
                "has {pointer} {value}, the machines' subnet is {want}"
            )),
            None => problems.push(format!("has no {pointer} (the machines' subnet {want})")),
        }
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// Host helpers

fn preflight() {
    let uid = fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Uid:")
                .map(|v| v.split_whitespace().next().unwrap_or("").to_owned())
        })
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "BOOTPLANE_E2E=1 needs root (network namespaces, tap devices)"
    );
    for tool in ["ip", "qemu-system-x86_64", "dnsmasq", "busybox", "kill"] {
        let found = std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
            .unwrap_or(false);
        assert!(found, "`{tool}` not found on PATH (apt-get install iproute2 qemu-system-x86 dnsmasq-base busybox-static)");
    }
    for file in [
        OVMF_CODE,
        OVMF_VARS,
        "/usr/lib/ipxe/ipxe.efi",
        "/usr/lib/ipxe/qemu/efi-virtio.rom",
    ] {
        assert!(
            Path::new(file).is_file(),
            "{file} missing (apt-get install ovmf ipxe ipxe-qemu)"
        );
    }
}

/// TCG unless the CPU offers real hardware virtualisation (this lab's PVM-flavoured KVM is
/// slower than TCG for firmware; see firmware-lab.md).
fn accelerator() -> &'static str {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw_virt = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if hw_virt && Path::new("/dev/kvm").exists() && !Path::new("/sys/module/kvm_pvm").exists() {
        "kvm:tcg"
    } else {
        "tcg"
    }
}

/// Builds (or reuses) the stand-in kernel + initramfs; returns the directory holding them.
fn build_standin() -> PathBuf {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("standin");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lab/build-standin.sh");
    let out = Command::new("sh")
        .arg(&script)
        .arg(&cache)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} failed ({}):\n{}{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    cache
}

/// Deletes namespaces left by earlier runs whose test process is gone (killed before its
/// Drop ran), after killing the processes still inside them by pid.
fn remove_stale_namespaces() {
    let Ok(entries) = fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let Some(owner) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if owner == std::process::id() || Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        if let Some(out) = run_timeout(&["ip", "netns", "pids", &name], Duration::from_secs(5)) {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        eprintln!("removing stale namespace {name}");
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
    }
}

/// Runs a short command, panicking with its output if it fails.
fn run(argv: &[&str]) {
    let out = run_timeout(argv, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("`{}` did not finish within 30 s", argv.join(" ")));
    assert!(
        out.status.success(),
        "`{}` failed ({}): {}",
        argv.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Runs a command to completion, or kills it (by pid) after `limit` and returns None.
fn run_timeout(argv: &[&str], limit: Duration) -> Option<Output> {
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", argv[0]));
    // Drain the pipes on threads so a chatty child cannot block on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut buf);
        buf
    });
    let deadline = Instant::now() + limit;
    let status: ExitStatus = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        sleep(Duration::from_millis(20));
    };
    Some(Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path)
        .map(|b| strip_escapes(&String::from_utf8_lossy(&b)))
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()));
    let all: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// The harness's own parsing, checked without privileges.

#[test]
fn marker_line_is_parsed_with_the_configs_digest_and_kinds() {
    let serial =
        "iPXE 1.0\r\n[ 3.1] e1000: Intel\r\nBOOTPLANE-MARKER mac=52:54:00:e2:01:01 ip=10.77.0.11 \
                  config_status=200 config_bytes=123 config_sha256=ab12\r\n\
                  config-kinds: HostnameConfig LinkAliasConfig \r\n[ 3.5] reboot: Power down\r\n";
    let m = parse_marker(serial, 1.0).unwrap();
    assert_eq!(m.mac, "52:54:00:e2:01:01");
    assert_eq!(m.ip, "10.77.0.11");
    assert_eq!(m.config_status.as_deref(), Some("200"));
    assert_eq!(m.config_bytes.as_deref(), Some("123"));
    assert_eq!(m.config_sha256.as_deref(), Some("ab12"));
    assert_eq!(
        m.kinds,
        Some(vec!["HostnameConfig".into(), "LinkAliasConfig".into()])
    );
    assert!(parse_marker("MARKER-FAILED udhcpc got no lease\r\n", 1.0).is_none());
}

#[test]
fn failure_texts_are_found_through_escape_codes() {
    let ovmf = "\u{1b}[2J\u{1b}[01;01HBdsDxe: failed to load Boot0001 \"UEFI PXEv4 (MAC:525400E20102)\" from PciRoot(0x0): Not Found\r\n";
    assert!(failure_in(ovmf).unwrap().contains("UEFI PXEv4"));
    assert!(failure_in("Booting from ROM...\r\nNo bootable device.\r\n").is_some());
    assert!(failure_in("MARKER-FAILED no eth0\r\n").is_some());
    assert!(failure_in("iPXE 1.0 -- Open Source Network Boot Firmware\r\n").is_none());
}

#[test]
fn event_chain_must_be_complete_and_in_order() {
    let vm = Vm {
        name: "uefi",
        firmware: Firmware::OvmfPxe,
        mac: "52:54:00:e2:01:02",
        hostname: "w",
        role: Role::Worker,
        ip: "10.77.0.12",
    };
    let chain: Vec<&[&str]> = vec![
        &["dhcp-ack"],
        &["tftp-served"],
        &["script-served"],
        &["kernel-fetched"],
        &["initramfs-fetched"],
        &["config-fetched"],
    ];
    let event = |kind: &str| {
        format!(
            r#"{{"mac":"52:54:00:e2:01:02","at":"2025-01-01T00:00:00Z","kind":"{kind}","detail":{{"file":"a\"b\u00e9"}}}}"#
        )
    };
    let log = |kinds: &[&str]| {
        let items: Vec<String> = kinds.iter().map(|k| event(k)).collect();
        serde_json::from_str::<serde_json::Value>(&format!("[{}]", items.join(","))).unwrap()
    };
    let full = [
        "dhcp-offer",
        "dhcp-ack",
        "tftp-served",
        "dhcp-ack",
        "script-served",
        "script-served",
        "kernel-fetched",
        "initramfs-fetched",
        "config-fetched",
    ];
    assert_eq!(judge_events(&vm, &log(&full), &chain), Vec::<String>::new());
    let missing = judge_events(&vm, &log(&full[..8]), &chain);
    assert!(missing[0].contains("lacks config-fetched"), "{missing:?}");
    let swapped = [
        "dhcp-ack",
        "tftp-served",
        "script-served",
        "initramfs-fetched",
        "kernel-fetched",
        "config-fetched",
    ];
    assert!(judge_events(&vm, &log(&swapped), &chain)[0].contains("out of order"));
    // The firmware's dhcp-ack was lost; only the booted OS's lease is logged.
    let lost_ack = [
        "dhcp-offer",
        "tftp-served",
        "script-served",
        "kernel-fetched",
        "initramfs-fetched",
        "dhcp-offer",
        "dhcp-ack",
        "config-fetched",
    ];
    let problems = judge_events(&vm, &log(&lost_ack), &chain);
    assert!(
        problems[0].contains("no tftp-served after dhcp-ack (event #7)"),
        "{problems:?}"
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(r#"{"a":[1,-2.5e3,true,null,"\ud83d\ude00"]}"#)
            .unwrap()
            .get("a")
            .unwrap()
            .as_array()
            .unwrap()[4],
        serde_json::Value::String("😀".into())
    );
}

/// `judge_config` passes the configs bootplane renders for Talos v1.13.9 (the real CLI on a
/// scratch data dir, as the lab registers its machines) and names each wrong value.
#[test]
fn config_judge_passes_rendered_v1_13_configs_and_names_each_wrong_value() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().display().to_string();
    let cli = |args: &[&str]| {
        let mut argv = vec![kit::BIN];
        argv.extend_from_slice(args);
        argv.extend(["--data-dir", &data_dir]);
        let out = run_timeout(&argv, Duration::from_secs(60)).unwrap();
        assert!(
            out.status.success(),
            "bootplane {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let lan = Lan {
        subnet: "10.77.0.0/24",
        gateway: "10.77.0.1",
        vip: "10.77.0.10",
        dns: Some("10.77.0.1"),
        appliance: None,
    };
    #[rustfmt::skip]
    let (cp, worker) = (
        Vm { name: "cp", firmware: Firmware::SeaBios, mac: "52:54:00:e2:09:01",
             hostname: "cp-1", role: Role::Controlplane, ip: "10.77.0.11" },
        Vm { name: "w", firmware: Firmware::SeaBios, mac: "52:54:00:e2:09:02",
             hostname: "worker-1", role: Role::Worker, ip: "10.77.0.14" },
    );
    for vm in [&cp, &worker] {
        let role = match vm.role {
            Role::Controlplane => "controlplane",
            Role::Worker => "worker",
        };
        let ip = format!("{}/24", vm.ip);
        cli(&[
            "machines",
            "add",
            "--mac",
            vm.mac,
            "--role",
            role,
            "--hostname",
            vm.hostname,
            "--ip",
            &ip,
            "--gateway",
            lan.gateway,
            "--dns",
            "10.77.0.1",
        ]);
    }
    cli(&[
        "cluster",
        "init",
        "--name",
        "lab",
        "--vip",
        lan.vip,
        "--talos-version",
        TALOS_VERSION,
    ]);
    let config = |vm: &Vm| config_documents(&cli(&["cluster", "config", "--mac", vm.mac])).unwrap();
    let (cp_docs, worker_docs) = (config(&cp), config(&worker));
    assert_eq!(judge_config(&cp, &lan, &cp_docs), Vec::<String>::new());
    assert_eq!(
        judge_config(&worker, &lan, &worker_docs),
        Vec::<String>::new()
    );

    use serde_json::json;
    type Docs = Vec<serde_json::Value>;
    // `change` applied to a copy of `docs`: the judge's problems, one per line.
    let judged = |vm: &Vm, docs: &Docs, change: &dyn Fn(&mut Docs)| {
        let mut docs = docs.clone();
        change(&mut docs);
        judge_config(vm, &lan, &docs).join("\n")
    };
    let named = |vm: &Vm, docs: &Docs, change: &dyn Fn(&mut Docs), want: &str| {
        let problems = judged(vm, docs, change);
        assert!(problems.contains(want), "want {want:?} in:\n{problems}");
    };
    let at = |docs: &Docs, kind: &str| docs.iter().position(|d| d["kind"] == kind).unwrap_or(0);
    // Sets `pointer` in the document of `kind` ("" for the v1alpha1 config).
    let set = |kind: &'static str, pointer: &'static str, value: serde_json::Value| {
        move |d: &mut Docs| {
            let i = at(d, kind);
            let (parent, key) = pointer.rsplit_once('/').unwrap();
            d[i].pointer_mut(parent).unwrap()[key] = value.clone();
        }
    };
    let without = |kind: &'static str| move |d: &mut Docs| drop(d.remove(at(d, kind)));
    let (cp_, w_) = (&cp, &worker);
    let (c, w) = (&cp_docs, &worker_docs);
    let other_mac = json!("mac(link.permanent_addr) == \"52:54:00:e2:09:02\"");
    let network = json!({ "hostname": "cp-1" });
    named(
        cp_,
        c,
        &set("HostnameConfig", "/hostname", json!("cp-9")),
        "names the host \"cp-9\"",
    );
    named(
        cp_,
        c,
        &set("LinkAliasConfig", "/selector/match", other_mac),
        "aliases the link",
    );
    named(
        cp_,
        c,
        &set("LinkConfig", "/addresses/0/address", json!("10.77.0.12/24")),
        "registered address is 10.77.0.11/24",
    );
    named(
        cp_,
        c,
        &set("LinkConfig", "/routes", json!([])),
        "no default route via 10.77.0.1",
    );
    named(
        cp_,
        c,
        &without("Layer2VIPConfig"),
        "has 0 Layer2VIPConfig documents",
    );
    named(
        cp_,
        c,
        &set("Layer2VIPConfig", "/name", json!("10.77.0.9")),
        "the cluster's VIP is 10.77.0.10",
    );
    named(
        cp_,
        c,
        &without("ResolverConfig"),
        "has 0 ResolverConfig documents",
    );
    named(
        cp_,
        c,
        &set("", "/machine/network", network.clone()),
        "still has machine.network",
    );
    named(
        cp_,
        c,
        &set("", "/machine/network", network),
        "document 1 (v1alpha1) is invalid",
    );
    named(
        cp_,
        c,
        &set("HostnameConfig", "/name", json!("x")),
        "(HostnameConfig) is invalid",
    );
    named(
        cp_,
        c,
        &set("", "/persist", json!(false)),
        "persist is false",
    );
    named(
        cp_,
        c,
        &|d| d.push(json!({ "apiVersion": "v1alpha1", "kind": "NoSuchConfig" })),
        "has no NoSuchConfig document",
    );
    named(
        cp_,
        c,
        &set("", "/cluster/etcd/advertisedSubnets", json!(["10.0.0.0/8"])),
        "has /cluster/etcd/advertisedSubnets [\"10.0.0.0/8\"]",
    );
    named(
        w_,
        w,
        &set(
            "",
            "/machine/kubelet/nodeIP",
            json!({ "validSubnets": ["10.78.0.0/24"] }),
        ),
        "has /machine/kubelet/nodeIP/validSubnets",
    );
    named(
        w_,
        w,
        &|d| {
            d[0]["machine"]["kubelet"]
                .as_object_mut()
                .unwrap()
                .shift_remove("nodeIP");
        },
        "has no /machine/kubelet/nodeIP/validSubnets",
    );
    named(
        w_,
        w,
        &set("", "/machine/type", json!("controlplane")),
        "has machine.type \"controlplane\"",
    );
    let vip = c[at(c, "Layer2VIPConfig")].clone();
    named(
        w_,
        w,
        &|d| d.push(vip.clone()),
        "of a worker has a Layer2VIPConfig",
    );
    // The cluster subnets, where present, pass when they are the machines' subnet.
    let subnets = judged(&cp, &cp_docs, &|d| {
        d[0]["machine"]["kubelet"]["nodeIP"] = json!({ "validSubnets": ["10.77.0.0/24"] });
        d[0]["cluster"]["etcd"]["advertisedSubnets"] = json!(["10.77.0.0/24"]);
    });
    assert_eq!(subnets, "");
}
