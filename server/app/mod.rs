//! Wiring and lifecycle: binds the sockets, starts every service, shuts them down in order.

pub mod tls;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

use crate::config::{Config, DhcpMode};
use crate::db::Db;
use crate::dhcp::{self, DhcpDeps, DhcpSockets};
use crate::inventory::{Inventory, Neighbours, Recorder};
use crate::net::ra;
use crate::state::AppState;
use crate::support::clock::SharedClock;
use crate::support::metrics::Metrics;
use crate::tftp::{self, IpxeFiles, TftpHandler};

/// Open files bootplane needs at its caps: HTTP and HTTPS connections, TFTP transfers (a socket
/// each), the push receivers' connections, the database and asset files, with room to spare.
pub const OPEN_FILES_WANTED: u64 = 8192;

/// Raises the soft limit on open files towards [`OPEN_FILES_WANTED`] (systemd and shells start
/// services at 1,024, which the connection and transfer caps together exceed; the hard limit is
/// usually far higher). Says so when the hard limit is lower.
pub fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let wanted = OPEN_FILES_WANTED.min(hard);
    if soft < wanted {
        match setrlimit(Resource::RLIMIT_NOFILE, wanted, hard) {
            Ok(()) => tracing::debug!(from = soft, to = wanted, "raised the open files limit"),
            Err(e) => tracing::warn!(soft, hard, error = %e, "cannot raise the open files limit"),
        }
    }
    if hard < OPEN_FILES_WANTED {
        tracing::warn!(hard, wanted = OPEN_FILES_WANTED,
            "the open files limit is low: at the connection and transfer caps, new connections may be refused (raise LimitNOFILE / ulimit -n)");
    }
}

/// Allocations from this size up are mapped and unmapped on their own (glibc).
const MMAP_THRESHOLD: i32 = 1 << 20;

/// Heaps (glibc arenas) the threads share at most.
const ARENAS: i32 = 2;

/// Tunes glibc's allocator; called first thing in `main`, before any thread exists.
///
/// - The threshold for mapping large allocations is fixed. Left dynamic, glibc raises it after
///   the first large block is freed, and from then on every Argon2 verification (19 MiB) on a
///   new blocking thread stays in that thread's arena after it is freed: 200 logins took RSS
///   to 361 MiB. Fixed, a verification's memory goes back to the system when it is done.
/// - The threads share two heaps. glibc's default (up to eight per core) gives each runtime,
///   blocking and SQLite thread a heap of its own, where what it freed stays: a boot storm of
///   1,000 machines peaked at 67.6 MiB with the default and 56.6 MiB with two, at the same CPU
///   time (bootplane-bench, boot storm N = 1,000).
#[allow(unsafe_code)]
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    {
        for (name, param, value) in [
            (
                "M_MMAP_THRESHOLD",
                nix::libc::M_MMAP_THRESHOLD,
                MMAP_THRESHOLD,
            ),
            ("M_ARENA_MAX", nix::libc::M_ARENA_MAX, ARENAS),
        ] {
            // SAFETY: mallopt only changes glibc's allocation parameters, under glibc's own
            // lock; it touches no memory of ours.
            let ok = unsafe { nix::libc::mallopt(param, value) };
            if ok != 1 {
                eprintln!("bootplane: mallopt({name}) refused");
            }
        }
    }
}

/// The sockets `run` serves on, bound before it starts (tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    pub http: TcpListener,
    /// HTTPS for the web UI and the API, unless turned off.
    pub https: Option<TcpListener>,
    pub tftp: UdpSocket,
    pub dhcp: Option<DhcpSockets>,
    /// Raw ICMPv6 socket for router advertisements, when enabled and permitted.
    pub ra: Option<socket2::Socket>,
    /// Talos's event sink (`talos.events.sink=`), unless turned off.
    pub talos_events: Option<TcpListener>,
    /// Kernel log receiver (`talos.logging.kernel=`), unless turned off.
    pub kernel_logs: Option<TcpListener>,
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot bind HTTP {addr}{hint}")]
    Http {
        addr: SocketAddr,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("cannot bind TFTP UDP port {port}{hint}")]
    Tftp {
        port: u16,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("cannot bind the {what} on TCP {addr}{hint}")]
    Receiver {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error(transparent)]
    Dhcp(#[from] dhcp::DhcpError),
    #[error("cannot open an ICMPv6 socket for router advertisements on {iface} (needs CAP_NET_RAW; or pass --ipv6-ra off)")]
    RouterAdvertisements {
        iface: String,
        source: std::io::Error,
    },
}

const PRIVILEGE_HINT: &str =
    " — ports below 1024 need root or CAP_NET_BIND_SERVICE: run with sudo, \
    or `sudo setcap 'cap_net_bind_service,cap_net_raw=+ep' $(command -v bootplane)`, \
    or choose other ports (--tftp-port, --http-port)";
const IN_USE_HINT: &str =
    " — another program already uses this port (stop it or choose another port)";

fn hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => PRIVILEGE_HINT,
        std::io::ErrorKind::AddrInUse => IN_USE_HINT,
        _ => "",
    }
}

/// Binds every socket the configuration asks for.
pub async fn bind(config: &Config) -> Result<Listeners, BindError> {
    let http = TcpListener::bind(config.http_bind)
        .await
        .map_err(|source| BindError::Http {
            addr: config.http_bind,
            hint: hint(&source),
            source,
        })?;
    let tftp_addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, config.tftp_port));
    let tftp = UdpSocket::bind(tftp_addr).map_err(|source| BindError::Tftp {
        port: config.tftp_port,
        hint: hint(&source),
        source,
    })?;
    let dhcp = match config.dhcp.mode {
        DhcpMode::Off => None,
        _ => Some(dhcp::bind(&config.dhcp, &config.interface)?),
    };
    let ra = if config.dhcp.router_advertisements {
        match ra::bind(&config.interface) {
            Ok(socket) => Some(socket),
            Err(source) if config.dhcp.router_advertisements_required => {
                return Err(BindError::RouterAdvertisements {
                    iface: config.interface.name.clone(),
                    source,
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, "not answering IPv6 router solicitations; iPXE will wait ~16 s for IPv6 on each boot");
                None
            }
        }
    } else {
        None
    };
    let receiver = |what: &'static str, port: Option<u16>| async move {
        let Some(port) = port else {
            return Ok(None);
        };
        let addr = SocketAddr::new(config.http_bind.ip(), port);
        TcpListener::bind(addr)
            .await
            .map(Some)
            .map_err(|source| BindError::Receiver {
                what,
                addr,
                hint: hint(&source),
                source,
            })
    };
    let talos_events =
        receiver("Talos event sink (--events-port)", config.boot.events_port).await?;
    let kernel_logs = receiver(
        "kernel log receiver (--kernel-log-port)",
        config.boot.kernel_log_port,
    )
    .await?;
    let https = match &config.https {
        Some(https) => {
            Some(
                TcpListener::bind(https.bind)
                    .await
                    .map_err(|source| BindError::Receiver {
                        what: "HTTPS listener (--https-port)",
                        addr: https.bind,
                        hint: hint(&source),
                        source,
                    })?,
            )
        }
        None => None,
    };
    Ok(Listeners {
        http,
        https,
        tftp,
        dhcp,
        ra,
        talos_events,
        kernel_logs,
    })
}

/// The whole HTTP surface. What booting machines reach (boot scripts, assets, their own
/// config), `/healthz` and `/metrics` are public; every UI page and API route needs an operator.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(crate::boot::router())
        .route("/metrics", get(metrics_get))
        .merge(operator_routes(&state))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// What the HTTPS listener serves: the web UI and the API (and `/healthz`), no boot routes.
pub fn https_router(state: AppState) -> Router {
    operator_routes(&state)
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

fn operator_routes(state: &AppState) -> Router<AppState> {
    use crate::auth::{require_operator, Gate, Surface};
    let gate = |surface, render| Gate {
        db: state.db.clone(),
        clock: state.recorder.clock().clone(),
        surface,
        render,
    };
    let ui = crate::ui::router().route_layer(axum::middleware::from_fn_with_state(
        gate(Surface::Ui, crate::ui::error_page),
        require_operator,
    ));
    // `layer`, not `route_layer`: unknown paths under /api/v1 need an operator too.
    let api = crate::api::router().layer(axum::middleware::from_fn_with_state(
        gate(Surface::Api, crate::api::error_response),
        require_operator,
    ));
    Router::new()
        .route("/healthz", get(health_get))
        .merge(crate::ui::public_router())
        .merge(ui)
        .nest("/api/v1", api)
        .merge(crate::api::public_router())
}

async fn health_get() -> &'static str {
    "ok\n"
}

async fn metrics_get(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        state.metrics.render(),
    )
}

/// Says at start-up which boot files are missing: iPXE binaries per architecture they would
/// serve, and Talos assets per version and arch that assigned machines would boot (each
/// machine's pinned version, else its cluster's, else `--talos-version`). Returns those
/// versions (once per arch).
async fn check_boot_files(state: &AppState) -> Vec<String> {
    let boot = &state.config.boot;
    let mut ipxe = vec![
        ("BIOS", "undionly.kpxe".to_string()),
        ("x86-64 UEFI", boot.efi_binary.as_str().to_string()),
        ("arm64 UEFI", boot.arm64_binary.clone()),
    ];
    let snapshot = state.inventory.snapshot();
    for m in snapshot.by_mac.values() {
        if let Some(efi) = m.efi_binary {
            let file = efi.as_str().to_string();
            if !ipxe.iter().any(|(_, f)| *f == file) {
                ipxe.push(("x86-64 UEFI (per-machine choice)", file));
            }
        }
    }
    for (arch, file) in ipxe {
        if boot.ipxe_dir.join(&file).is_file() {
            continue;
        }
        let fix = if arch.starts_with("arm64") {
            "Debian's ipxe package has no arm64 build: put one there, or pass --arm64-binary"
        } else {
            "Debian: apt-get install ipxe, or pass --ipxe-dir"
        };
        tracing::warn!(dir = %boot.ipxe_dir.display(), file = %file,
            "iPXE binary missing: {arch} machines cannot network-boot ({fix})");
    }

    let mut wanted = std::collections::BTreeMap::new();
    for m in snapshot.by_mac.values().filter(|m| m.is_assigned()) {
        match crate::assets::machine_version(&state.db, m, &boot.talos_version).await {
            Ok(version) => {
                let arch = crate::assets::arch_of_client(m.last_arch);
                wanted.insert((version, arch.as_str()), arch);
            }
            Err(e) => {
                tracing::warn!(mac = %m.mac, error = %e, "cannot tell which Talos version this machine boots")
            }
        }
    }
    if wanted.is_empty() {
        let cluster = state.db.get_cluster(None).await.ok().flatten();
        let version = cluster
            .and_then(|c| c.talos_version)
            .unwrap_or_else(|| boot.talos_version.clone());
        wanted.insert((version, "amd64"), crate::talos::Arch::Amd64);
    }
    let mut versions = Vec::new();
    for ((version, _), arch) in wanted {
        versions.push(version.clone());
        match state.images.availability(&version, arch).await {
            Ok(a) => {
                if let Some(problem) = a.problem(&version, arch) {
                    let command = state.config.images_add_command(&version, arch.as_str());
                    tracing::warn!(version = %version, arch = arch.as_str(),
                        "{problem}: machines that boot it wait and retry (add it: {command}; or an Image Factory build with --schematic <id> in place of --release)");
                }
            }
            Err(e) => tracing::warn!(version = %version, error = %e, "cannot check boot assets"),
        }
    }
    versions
}

/// Loads, on a blocking thread, the config schema of each Talos line that `versions` name and
/// compiles its machine-config validator, so the first machine to fetch its config does not
/// wait for that (tens of milliseconds).
fn warm_config_schemas(versions: &[String]) {
    let mut contracts: Vec<crate::talos::config::Contract> = versions
        .iter()
        .filter_map(|v| crate::talos::config::Contract::of(v).ok())
        .collect();
    contracts.sort();
    contracts.dedup();
    tokio::task::spawn_blocking(move || {
        for contract in contracts {
            crate::talos::config::warm_schema(contract);
        }
    });
}

/// Runs `task` on a thread and single-threaded runtime of its own, so it waits for no task of
/// the shared runtime. The task must end on `run`'s cancellation: the shared runtime waits for
/// the thread when it shuts down.
fn spawn_on_own_thread(
    name: &'static str,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::task::spawn_blocking(move || {
        // Named after its server while it runs, so `top -H`, `perf` and /proc tell the
        // threads apart; the pool's name comes back when it ends.
        let pooled = nix::sys::prctl::get_name().ok();
        if let Ok(n) = std::ffi::CString::new(name) {
            let _ = nix::sys::prctl::set_name(&n);
        }
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(task),
            Err(e) => tracing::error!(error = %e, "the {name} server cannot start its runtime"),
        }
        if let Some(pooled) = pooled {
            let _ = nix::sys::prctl::set_name(&pooled);
        }
    })
}

/// What the push receivers borrow from `run` while they are spawned.
struct ReceiverDeps<'a> {
    inventory: &'a Inventory,
    neighbours: &'a Neighbours,
    recorder: &'a Recorder,
    orchestrator: &'a crate::orchestrator::Handle,
    metrics: &'a Metrics,
}

type Task = Option<tokio::task::JoinHandle<()>>;

/// Starts Talos's event sink and the kernel log receiver (with its boot log writer) on the
/// listeners that were bound.
fn spawn_receivers(
    config: &Config,
    db: &Db,
    events: Option<TcpListener>,
    kernel_logs: Option<TcpListener>,
    deps: ReceiverDeps<'_>,
    cancel: &CancellationToken,
) -> (Task, Task, Task) {
    use crate::receivers::{kmsg, sink};
    let sink_task = events.map(|listener| {
        let deps = sink::SinkDeps {
            inventory: deps.inventory.clone(),
            neighbours: deps.neighbours.clone(),
            recorder: deps.recorder.clone(),
            orchestrator: deps.orchestrator.clone(),
            metrics: deps.metrics.clone(),
        };
        tokio::spawn(sink::serve(listener, deps, cancel.clone()))
    });
    let mut writer = None;
    let kmsg_task = kernel_logs.map(|listener| {
        let (queue, write) =
            kmsg::BootLogQueue::new(db.clone(), config.boot.boot_log_lines, deps.metrics.clone());
        writer = Some(tokio::spawn(write));
        let deps = kmsg::KmsgDeps {
            inventory: deps.inventory.clone(),
            neighbours: deps.neighbours.clone(),
            queue,
            metrics: deps.metrics.clone(),
            clock: Arc::clone(deps.recorder.clock()),
        };
        tokio::spawn(kmsg::serve(listener, deps, cancel.clone()))
    });
    (sink_task, kmsg_task, writer)
}

/// Serves until `shutdown` completes, then stops every service and flushes state.
pub async fn run(
    config: Config,
    db: Db,
    clock: SharedClock,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    // The operator's HTTPS certificate, or the one made on first start.
    let https = match (listeners.https, &config.https) {
        (Some(listener), Some(https)) => Some((
            listener,
            crate::app::tls::server_config(&https.cert).context("cannot set up https")?,
        )),
        _ => None,
    };
    // Before anything is served: every recorded boot asset is hashed again, and one that does
    // not match its record is out of service.
    let images = crate::assets::Images::new(config.boot.images_dir.clone(), db.clone())
        .with_additions(config.boot.kernel_additions());
    images.verify_at_start().await;
    crate::auth::ensure_admin(
        &db,
        config.ui.admin_password.as_ref().map(|p| p.0.as_str()),
        clock.now_ms(),
    )
    .await?;
    // Every render of a config (served, previewed, from the CLI) names these targets, and the
    // CLI checks machine addresses against this LAN.
    db.set_appliance_facts(
        &config.boot.report_targets(),
        &crate::ops::lan::Lan::facts(&config),
        clock.now_ms(),
    )
    .await
    .context("cannot record the appliance's report-in targets and LAN")?;
    let metrics = Metrics::default();
    let inventory = Inventory::default();
    inventory.reload(&db).await?;
    let neighbours = Neighbours::default();
    let (recorder, writer) = Recorder::new(db.clone(), clock, metrics.clone());
    let writer = tokio::spawn(writer);
    let cancel = CancellationToken::new();
    // Every way out of `run` stops the tasks, the DHCP thread among them: the runtime waits
    // for that thread when it shuts down.
    let _cancel_on_return = cancel.clone().drop_guard();

    let watcher = tokio::spawn(inventory.clone().watch(
        db.clone(),
        Duration::from_millis(500),
        cancel.clone(),
    ));

    let ipxe_files = IpxeFiles::new(config.boot.ipxe_dir.clone());
    let tftp_task = {
        let handler = TftpHandler::new(
            ipxe_files.clone(),
            recorder.clone(),
            neighbours.clone(),
            metrics.clone(),
        );
        let cancel = cancel.clone();
        let (block, window) = (config.boot.tftp_block_limit, config.boot.tftp_window_limit);
        let socket = listeners.tftp;
        tokio::spawn(async move {
            if let Err(e) = tftp::run(handler, socket, block, window, cancel).await {
                tracing::error!(error = %e, "tftp server stopped");
            }
        })
    };

    let ra_task = listeners
        .ra
        .map(|socket| tokio::spawn(ra::run(socket, config.interface.clone(), cancel.clone())));

    let dhcp_task = listeners.dhcp.map(|sockets| {
        let deps = DhcpDeps {
            config: config.dhcp.clone(),
            boot: config.boot.clone(),
            interface: config.interface.clone(),
            inventory: inventory.clone(),
            recorder: recorder.clone(),
            neighbours: neighbours.clone(),
            metrics: metrics.clone(),
            db: db.clone(),
        };
        // On the shared runtime a packet could queue behind an inventory reload or a
        // connection's sendfile (proxyDHCP p99 1.28 ms -> 696 µs in one bench run).
        spawn_on_own_thread("dhcp", dhcp::run(deps, sockets, cancel.clone()))
    });

    let (orchestrator, orchestrator_task) = crate::orchestrator::spawn(
        db.clone(),
        recorder.clone(),
        config.orchestrator.clone(),
        cancel.clone(),
    );
    let (sink_task, kmsg_task, boot_log_writer) = spawn_receivers(
        &config,
        &db,
        listeners.talos_events,
        listeners.kernel_logs,
        ReceiverDeps {
            inventory: &inventory,
            neighbours: &neighbours,
            recorder: &recorder,
            orchestrator: &orchestrator,
            metrics: &metrics,
        },
        &cancel,
    );
    let state = AppState::new(crate::state::AppStateInner {
        config: Arc::clone(&config),
        db: db.clone(),
        inventory: inventory.clone(),
        recorder: recorder.clone(),
        neighbours,
        metrics: metrics.clone(),
        orchestrator,
        login_limiter: crate::auth::LoginLimiter::default(),
        images,
        open_assets: crate::http::files::OpenAssets::new(metrics.http_sendfile_bytes.clone()),
        ipxe_files,
        devices: crate::auth::devices::DeviceFlow::default(),
        transfers: crate::inventory::Transfers::default(),
        scripts: crate::state::ScriptCache::default(),
        materials: crate::ops::materials::MaterialsCache::default(),
    });
    drop(recorder);
    let versions = check_boot_files(&state).await;
    warm_config_schemas(&versions);
    for warning in config.startup_warnings() {
        tracing::warn!("{warning}");
    }
    tracing::info!(
        interface = %config.interface.name,
        advertise = %config.boot.advertise_ip,
        http = %listeners.http.local_addr()?,
        dhcp_mode = %config.dhcp.mode,
        worker_threads = config.worker_threads,
        "bootplane serving"
    );
    let stop = cancel.child_token();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    });
    // Connections send asset chunks with sendfile (boot::zerocopy), within the connection caps
    // and idle timeout; `tap_io` only sets TCP_NODELAY.
    let listener = crate::http::zerocopy::ZeroCopyListener::new(
        listeners.http,
        state.open_assets.regions(),
        &config.http,
        &metrics,
    )
    .tap_io(|io| io.set_nodelay());
    let https = https.map(|(listener, tls)| {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "serving the web UI and API over https");
        }
        // Its own caps, as large as the HTTP listener's; nothing recorded is sent from here.
        let listener = crate::http::zerocopy::ZeroCopyListener::new(
            listener,
            crate::http::zerocopy::Regions::default(),
            &config.http,
            &metrics,
        )
        .tap_io(|io| io.set_nodelay());
        crate::http::serve::serve_tls(
            listener,
            https_router(state.clone()),
            config.http.header_timeout,
            tls,
            stop.clone().cancelled_owned(),
        )
    });
    let http = crate::http::serve::serve(
        listener,
        router(state),
        config.http.header_timeout,
        stop.clone().cancelled_owned(),
    );
    match https {
        Some(https) => {
            tokio::join!(http, https);
        }
        None => http.await,
    }
    tracing::info!("shutting down");
    cancel.cancel();
    if let Some(task) = dhcp_task {
        let _ = task.await;
    }
    let _ = tftp_task.await;
    if let Some(task) = ra_task {
        let _ = task.await;
    }
    let _ = watcher.await;
    let _ = orchestrator_task.await;
    for task in [sink_task, kmsg_task].into_iter().flatten() {
        // A peer that holds its connection open must not hold up the shutdown.
        let abort = task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    // The receivers are gone, and with them every boot log queue: the writer flushes and ends.
    if let Some(writer) = boot_log_writer {
        let _ = writer.await;
    }
    // Every recorder clone is gone now; the writer flushes what is queued and ends.
    let _ = writer.await;
    db.close().await;
    tracing::info!("stopped");
    Ok(())
}
