//! `bootplane-talos-double`: a test tool that plays one Talos node's API (apid on :50000):
//! `machine.MachineService` over gRPC with Talos's mutual-TLS checks and simulated etcd
//! state. See `bootplane::testkit::double` for the behaviour, the state file and the HTTP
//! control API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

use bootplane::talos::secrets::SecretsBundle;
use bootplane::testkit::double::{
    control_router, DoubleConfig, EtcdStore, NodeRole, TalosDouble, DEFAULT_TALOS_VERSION,
};

/// A Talos node double for tests: answers Talos's machine API (Version, ServiceList,
/// EtcdMemberList, EtcdRemoveMemberByID, Bootstrap) on Talos's wire protocol, with the
/// mutual-TLS checks Talos's apid makes (client certificate from the cluster's OS CA, EKU
/// exactly clientAuth, role from Subject O) and Talos's status codes. Not a Talos node: etcd
/// is simulated. Every RPC is recorded in the state file.
///
/// State file (JSON, rewritten atomically on every change): hostname, role, listen,
/// talos_version, phase (booting|ready), etcd ({"state":"empty"} | {"state":"member",
/// "cluster_id":..} | {"state":"bootstrapped","cluster_id":..}), cluster (shared etcd:
/// cluster_id, members[{id,hostname,peer_urls,client_urls,is_learner}]), embedded_error,
/// calls[{method,at_ms,peer,roles,code,message}], tls_rejections[{at_ms,peer,error}].
///
/// Control API (--control): GET /state; POST /etcd {"state":"empty"|"member"|"bootstrapped"};
/// PUT /members [..]; POST /phase {"phase":"booting"|"ready","ready_after_secs":N};
/// PUT|DELETE /embedded-error {"method","hostname","error","code","message"}; DELETE /calls.
#[derive(Debug, Parser)]
#[command(name = "bootplane-talos-double", version)]
struct Args {
    /// Address to serve the Talos API on (its IP goes in the server certificate's SANs).
    #[arg(long, value_name = "IP:PORT")]
    listen: SocketAddr,
    /// The cluster's secrets.yaml (as `bootplane cluster export-secrets` writes it): the OS CA
    /// issues the server certificate and is the only CA accepted for clients.
    #[arg(long, value_name = "FILE")]
    secrets: PathBuf,
    /// The node's hostname (server certificate CN and DNS SAN, etcd member name).
    #[arg(long)]
    hostname: String,
    /// The node's machine type.
    #[arg(long, value_enum)]
    role: NodeRole,
    /// JSON state file, rewritten atomically on every change (calls, etcd state, members).
    #[arg(long, value_name = "FILE")]
    state: PathBuf,
    /// Serve the HTTP control API here (JSON; see above).
    #[arg(long, value_name = "IP:PORT")]
    control: Option<SocketAddr>,
    /// Booting for this many seconds after start (Bootstrap answers "not available yet").
    #[arg(long, value_name = "SECS")]
    ready_after: Option<f64>,
    /// JSON file holding the etcd cluster (ID and members) that doubles naming the same file
    /// share; without it the member list is private to this double.
    #[arg(long, value_name = "FILE")]
    etcd_cluster: Option<PathBuf>,
    /// Join the shared etcd cluster by itself once one exists (control plane, ready, etcd empty).
    #[arg(long)]
    auto_join: bool,
    /// Talos version to report from Version.
    #[arg(long, default_value = DEFAULT_TALOS_VERSION)]
    talos_version: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();

    let text = std::fs::read_to_string(&args.secrets)
        .with_context(|| format!("reading {}", args.secrets.display()))?;
    let bundle = SecretsBundle::from_yaml(&text)
        .with_context(|| format!("parsing {}", args.secrets.display()))?;
    let ready_after = args
        .ready_after
        .map(Duration::try_from_secs_f64)
        .transpose()
        .context("--ready-after")?;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let listen = listener.local_addr().context("listen address")?;
    let mut config = DoubleConfig::new(&args.hostname, args.role, listen);
    config.talos_version = args.talos_version;
    config.ready_after = ready_after;
    config.state_file = Some(args.state);
    config.auto_join = args.auto_join;
    if let Some(path) = args.etcd_cluster {
        config.etcd = EtcdStore::File(path);
    }
    let double = TalosDouble::new(&bundle, config).context("setting up the double")?;

    let control = match args.control {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            Some(l)
        }
        None => None,
    };
    let control_addr = control.as_ref().and_then(|l| l.local_addr().ok());
    // One line on stdout so scripts can learn the ports when they asked for port 0.
    match control_addr {
        Some(c) => println!("talos-double listening on {listen} control on {c}"),
        None => println!("talos-double listening on {listen}"),
    }

    let shutdown = tokio_util::sync::CancellationToken::new();
    if let Some(l) = control {
        let router = control_router(double.clone());
        let token = shutdown.clone();
        tokio::spawn(async move {
            let serve = axum::serve(l, router).with_graceful_shutdown(token.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "control API stopped");
            }
        });
    }
    let token = shutdown.clone();
    tokio::spawn(async move {
        signal().await;
        token.cancel();
    });
    double
        .serve(listener, shutdown.cancelled_owned())
        .await
        .context("serving")?;
    Ok(())
}

/// SIGINT or SIGTERM.
async fn signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
