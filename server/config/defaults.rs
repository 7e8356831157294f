//! The built-in defaults, as named constants.

use std::time::Duration;

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
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 2048;
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

pub const MIN_PASSWORD_LEN: usize = 12;

/// Most threads `--worker-threads` takes.
pub const MAX_WORKER_THREADS: usize = 256;

/// The runtime's threads when `--worker-threads` is not given: half the CPUs this process may
/// run on, at least one. The bytes of a boot move in the kernel (`sendfile`, UDP sends), so a
/// thread is rarely busy for long, while every thread more brings wake-ups of idle threads to
/// share queued work; the other half stays free for the DHCP thread, SQLite's threads and the
/// kernel's network processing. On a 2-CPU machine, one thread against two: a boot storm used
/// 18% less CPU and finished 10% sooner, and per-machine scripts were served 6% faster
/// (`bootplane-bench`, README "Benchmark").
pub fn default_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// The public Image Factory; an air-gapped mirror is given with `--factory-url`.
pub const DEFAULT_FACTORY_URL: &str = "https://factory.talos.dev";
/// Where Talos releases publish `vmlinuz-<arch>` and `initramfs-<arch>.xz`.
pub const DEFAULT_RELEASE_URL: &str = "https://github.com/siderolabs/talos/releases/download";

/// Where the generated certificate and key live, under the data directory.
pub const TLS_GENERATED_DIR: &str = "tls";

/// Port of the Talos API on the nodes (`--talos-api-port`).
pub const DEFAULT_TALOS_API_PORT: u16 = 50000;
/// After a Bootstrap call with an unknown outcome, how long before it may be repeated.
pub const DEFAULT_BOOTSTRAP_HOLDOFF: Duration = Duration::from_secs(300);
/// Longest wait between two report-in probes of one machine.
pub const DEFAULT_PROBE_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A machine sent to its disk that network-boots again this soon may be reinstalled.
pub const DEFAULT_WIPE_WINDOW: Duration = Duration::from_secs(600);
/// How long a machine's Talos API must fail the cluster's mTLS before a network boot counts
/// as a wipe.
pub const DEFAULT_WIPE_CONFIRM: Duration = Duration::from_secs(30);
/// How long a cluster's etcd must be seen gone before it counts as lost.
pub const DEFAULT_ETCD_LOST_CONFIRM: Duration = Duration::from_secs(30);
/// How often clusters are re-evaluated without any signal.
pub const DEFAULT_ORCHESTRATOR_TICK: Duration = Duration::from_secs(5);
/// Report-in probes in flight at most.
pub const DEFAULT_MAX_PROBES: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;

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
