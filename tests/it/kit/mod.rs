//! The harness kit every feature module uses: a running appliance in process (`Appliance`,
//! `app::run` on loopback ephemeral ports with temporary directories), the real binary
//! (`served`), HTTP clients and sessions (`http`), DHCP packets (`dhcp`), the Talos side
//! (`talos`: one secrets bundle, a cluster the Talos doubles trust), a disk that loses what was
//! not fsynced when the power is cut (`powercut`, a FUSE layer), a bad link between a VM and a
//! lab bridge (`impair`), and turns on the CPU for the heavy tests (`turns`). The
//! network-namespace and QEMU lab lives with its only user, `firmware_e2e`.
#![allow(dead_code)]

mod appliance;
pub mod dhcp;
pub mod http;
pub mod impair;
pub mod powercut;
pub mod served;
pub mod talos;
pub mod turns;

use std::path::{Path, PathBuf};
use std::process::Command;

pub use appliance::Appliance;
pub use dhcp::{pxe_packet, send};
pub use http::{connect_from, no_redirects, session_cookie, Session};
pub use talos::{cached_bundle, init_lab_cluster};

/// The Talos version every test appliance defaults to.
pub const VERSION: &str = "v1.11.6";
/// The admin password every test appliance starts with (`ServeOptions.admin_password`).
pub const ADMIN_PASSWORD: &str = "test-admin-password";
/// The appliance's real binary, as Cargo built it for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_bootplane");

/// Deterministic pseudo-random bytes, so a corrupted byte anywhere is noticed.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// Runs a real client program and returns (success, stdout, stderr).
fn run(program: &str, args: &[&str], cwd: Option<&Path>) -> (bool, Vec<u8>, String) {
    let mut cmd = Command::new(program);
    cmd.args(args);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {program}: {e} (is it installed? .ci/run installs it)")
    });
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `run` on a blocking thread, so the appliance keeps serving meanwhile.
pub async fn run_client(
    program: &'static str,
    args: Vec<String>,
    cwd: Option<PathBuf>,
) -> (bool, Vec<u8>, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(program, &args, cwd.as_deref())
    })
    .await
    .unwrap()
}

pub fn s(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Milliseconds since the Unix epoch, as the appliance's clock gives them.
pub fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}
