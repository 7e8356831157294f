//! The fuzz targets' seeds and regressions (tests/fuzz): every committed input runs through
//! its target here, uninstrumented, on every test run, so a crash a campaign found stays
//! fixed. The seeds of the targets below are made from the appliance's own fixtures and
//! types; `BOOTPLANE_WRITE_FUZZ_SEEDS=1` writes them, otherwise the committed ones must match.
//! (The DHCP seeds are the firmware fixtures, written by the DHCP unit tests.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bootplane::talos::api::pb::events::EventRequest;
use bootplane::talos::api::pb::machine as m;
use bootplane::testkit::fuzz::{target, TARGETS};
use prost::Message as _;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz")
}

fn rrq(write: bool, path: &str, mode: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut p = vec![0, if write { 2 } else { 1 }];
    for field in [path, mode]
        .into_iter()
        .chain(options.iter().flat_map(|(k, v)| [*k, *v]))
    {
        p.extend_from_slice(field.as_bytes());
        p.push(0);
    }
    p
}

fn event(name: &str, value: Vec<u8>) -> Vec<u8> {
    EventRequest {
        data: Some(prost_types::Any {
            type_url: format!("talos/runtime/machine.{name}"),
            value,
        }),
        id: "d2kq0a4l2v7s73fjr1g0".into(),
        actor_id: String::new(),
    }
    .encode_to_vec()
}

/// Every seed but the DHCP ones, by target and name.
fn seeds() -> BTreeMap<(&'static str, &'static str), Vec<u8>> {
    let mut s: BTreeMap<(&str, &str), Vec<u8>> = BTreeMap::new();
    let mut put = |t, n, bytes: Vec<u8>| {
        s.insert((t, n), bytes);
    };
    // TFTP: what tftp-hpa, curl, atftp and the iPXE ROMs send.
    let opts = [("blksize", "1468"), ("tsize", "0")];
    put(
        "tftp",
        "rrq-ipxe-efi",
        rrq(false, "ipxe.efi", "octet", &opts),
    );
    put(
        "tftp",
        "rrq-plain",
        rrq(false, "undionly.kpxe", "netascii", &[]),
    );
    let window = [("blksize", "1468"), ("windowsize", "16"), ("timeout", "1")];
    put(
        "tftp",
        "rrq-window",
        rrq(false, "52-54-00-77-00-03/ipxe.efi", "octet", &window),
    );
    put("tftp", "wrq", rrq(true, "ipxe.efi", "octet", &[]));
    put("tftp", "escape", rrq(false, "../etc/passwd", "octet", &[]));
    // The boot query strings iPXE sends (`${net0/mac}`, `${uuid}`, `${serial}`, `${buildarch}`).
    for (name, q) in [
        (
            "machine-full",
            "mac=52:54:00:77:00:03&uuid=7e57ab1e-0000-4000-8000-000000000001&serial=S123&arch=x86_64",
        ),
        ("machine-arm", "mac=52-54-00-77-00-03&arch=arm64"),
        ("config", "mac=5254.0077.0003"),
    ] {
        put("boot-query", name, q.as_bytes().to_vec());
    }
    // Kernel-log lines as Talos sends them (`talos.logging.kernel=`).
    put(
        "kernel-log",
        "talos-line",
        br#"{"clock":1234567,"facility":"kern","msg":"Linux version 6.12","priority":"notice","seq":3,"talos-level":"info","talos-time":"2026-08-21T10:00:00.123456Z","cluster":"lab"}"#.to_vec(),
    );
    put(
        "kernel-log",
        "odd-types",
        br#"{"msg":"x","seq":"three","clock":-1}"#.to_vec(),
    );
    // Event-sink messages: the events bootplane reads.
    let status = m::MachineStatusEvent {
        stage: m::machine_status_event::MachineStage::Running as i32,
        status: Some(m::machine_status_event::MachineStatus {
            ready: false,
            unmet_conditions: vec![m::machine_status_event::machine_status::UnmetCondition {
                name: "nodeReady".into(),
                reason: "node not ready".into(),
            }],
        }),
    };
    put(
        "event-sink",
        "status",
        event("MachineStatusEvent", status.encode_to_vec()),
    );
    let phase = m::PhaseEvent {
        phase: "saveConfig".into(),
        action: m::phase_event::Action::Stop as i32,
    };
    put(
        "event-sink",
        "phase",
        event("PhaseEvent", phase.encode_to_vec()),
    );
    let service = m::ServiceStateEvent {
        service: "apid".into(),
        action: m::service_state_event::Action::Running as i32,
        message: "Health check successful".into(),
    };
    put(
        "event-sink",
        "service",
        event("ServiceStateEvent", service.encode_to_vec()),
    );
    // Patches: strategic merge (with a delete directive, several documents) and RFC 6902.
    for (name, text) in [
        (
            "merge",
            "machine:\n  sysctls:\n    vm.nr_hugepages: \"1024\"\n  install:\n    disk: /dev/nvme0n1\n",
        ),
        (
            "delete",
            "machine:\n  network:\n    interfaces:\n      - deviceSelector:\n          hardwareAddr: 52:54:00:77:00:03\n        $patch: delete\n",
        ),
        (
            "documents",
            "cluster:\n  network:\n    cni:\n      name: none\n---\napiVersion: v1alpha1\nkind: HostnameConfig\nauto: stable\n",
        ),
        (
            "json",
            r#"[{"op":"add","path":"/machine/kubelet/extraArgs","value":{"rotate-server-certificates":"true"}},{"op":"remove","path":"/cluster/discovery"},{"op":"replace","path":"/machine/install/wipe","value":true}]"#,
        ),
    ] {
        put("patch", name, text.as_bytes().to_vec());
    }
    // A secrets bundle as `bootplane` (and `talosctl gen secrets`) writes it.
    let bundle = bootplane::talos::secrets::SecretsBundle::generate(
        "v1.13.9",
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_780_000_000),
    )
    .expect("generate a bundle");
    put("secrets", "generated", bundle.to_yaml().into_bytes());
    // The config file.
    put(
        "config-file",
        "options",
        b"http_port = 9000\ndhcp_mode = \"full\"\ndhcp_dns = [\"10.0.0.53\"]\ndhcp_pool = \"10.0.0.100-10.0.0.200\"\nadmin_password = \"a long password\"\n".to_vec(),
    );
    put("config-file", "unknown-key", b"http_prot = 1\n".to_vec());
    s
}

#[test]
fn every_target_has_committed_seeds_made_from_the_fixtures() {
    let dir = fuzz_dir().join("seeds");
    let seeds = seeds();
    if std::env::var_os("BOOTPLANE_WRITE_FUZZ_SEEDS").is_some() {
        for ((t, name), bytes) in &seeds {
            let path = dir.join(t).join(name);
            // A generated bundle is new at every run: the committed one stays.
            if *t == "secrets" && path.exists() {
                continue;
            }
            std::fs::create_dir_all(dir.join(t)).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
    }
    for ((t, name), bytes) in &seeds {
        let committed = std::fs::read(dir.join(t).join(name))
            .unwrap_or_else(|e| panic!("{t}/{name}: {e} (BOOTPLANE_WRITE_FUZZ_SEEDS=1 writes it)"));
        if *t == "secrets" {
            let text = String::from_utf8(committed).unwrap();
            let parsed = bootplane::talos::secrets::SecretsBundle::from_yaml(&text);
            assert!(parsed.is_ok(), "{t}/{name} is not a bundle: {parsed:?}");
        } else {
            assert!(
                committed == *bytes,
                "{t}/{name} differs from what it is made from"
            );
        }
    }
    for (t, _) in TARGETS {
        let n = std::fs::read_dir(dir.join(t))
            .map(|d| d.count())
            .unwrap_or(0);
        assert!(
            n > 0,
            "target {t} has no seeds in {}",
            dir.join(t).display()
        );
    }
}

/// Every committed seed and regression input, through its target: none may panic, and every
/// target accepts some of its seeds (one that refused them all would fuzz nothing past its
/// first check).
#[test]
fn every_seed_and_regression_runs_through_its_target() {
    let mut ran = 0;
    let mut accepted: BTreeMap<String, usize> = BTreeMap::new();
    for kind in ["seeds", "regressions"] {
        let Ok(targets) = std::fs::read_dir(fuzz_dir().join(kind)) else {
            continue;
        };
        for t in targets {
            let t = t.unwrap();
            let name = t.file_name().to_string_lossy().into_owned();
            let run = target(&name).unwrap_or_else(|| panic!("{kind}/{name}: no such target"));
            for input in std::fs::read_dir(t.path()).unwrap() {
                let path = input.unwrap().path();
                let bytes = std::fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| run(&bytes));
                assert!(outcome.is_ok(), "{} panicked its target", path.display());
                if kind == "seeds" && outcome.unwrap() {
                    *accepted.entry(name.clone()).or_default() += 1;
                }
                ran += 1;
            }
        }
    }
    for (t, _) in TARGETS {
        assert!(
            accepted.get(*t).copied().unwrap_or(0) > 0,
            "target {t} accepted none of its seeds: {accepted:?}"
        );
    }
    assert!(ran >= TARGETS.len(), "only {ran} inputs ran");
}

/// The fuzz entry points do more than return: a DHCP exchange from the fixtures is answered,
/// and a boot query with a MAC is read as one (a target that silently did nothing would pass
/// every campaign).
#[test]
fn the_targets_reach_the_code_they_fuzz() {
    let dhcp = std::fs::read(fuzz_dir().join("seeds/dhcp/ipxe-efi-known-0")).unwrap();
    assert!(
        bootplane::testkit::fuzz::dhcp_replies(&dhcp) >= 2,
        "DORA not answered"
    );
    assert!(bootplane::boot::read_query(
        b"mac=52:54:00:77:00:03&arch=x86_64"
    ));
    assert!(!bootplane::boot::read_query(b"mac=nope"));
}
