//! The orchestrator: sees nodes report in, bootstraps etcd exactly once per cluster
//! generation, and brings wiped machines back.
//!
//! Only this module decides a bootstrap. The decision (target and generation) is persisted
//! before any call, the call itself is marked in the database before it goes out, and a marked
//! call is never followed by another within the hold-off, nor ever by a call to another node.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::db::Db;
use crate::inventory::Recorder;
use crate::model::{Lifecycle, Mac, Role};
use crate::ops::materials;
use crate::support::clock::SharedClock;
use crate::talos::api::TalosApi;

mod bootstrap;
mod etcd;
mod netboot;
mod probe;

use bootstrap::evaluate_all;
use probe::{start_probe, ProbeViews, Silences};

pub use netboot::{installed_machine_netbooted, WIPE_MIN_FAILED_PROBES};
pub use probe::Silence;

pub use crate::config::OrchestratorSettings as Settings;

/// What other subsystems tell the orchestrator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// A machine fetched its config: start probing its Talos API. A control plane's fetch has
    /// the clusters evaluated too (a reinstalled one's stale etcd member must go before it
    /// joins); a worker's changes nothing the evaluation looks at.
    ConfigServed(Mac, Role),
    /// An installed machine was sent to its disk: probe it to see it come back.
    HandedOff(Mac),
    /// A machine is being reinstalled (wiped, or by the operator).
    Reinstalled(Mac),
    /// A node pushed news about itself (Talos's event sink): probe its Talos API now instead
    /// of at the end of the backoff. The push is unauthenticated, so it is never evidence by
    /// itself; only the probe's answer can mark the machine ready.
    SignOfLife(Mac),
    /// Something changed: evaluate the clusters now.
    Kick,
}

/// Cheap handle other subsystems use to signal the orchestrator; never blocks.
#[derive(Clone, Debug)]
pub struct Handle {
    tx: mpsc::Sender<Signal>,
    settings: Arc<Settings>,
    silences: Silences,
    probe_views: ProbeViews,
}

impl Handle {
    /// What the running probe of `mac`'s Talos API has seen (none once it answered).
    pub fn probe_view(&self, mac: Mac) -> Option<crate::model::timeline::ProbeView> {
        self.probe_views.get(mac)
    }

    pub fn signal(&self, signal: Signal) {
        if self.tx.try_send(signal).is_err() {
            tracing::warn!(
                ?signal,
                "orchestrator queue full; the next tick will catch up"
            );
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// A handle whose signals go nowhere (for tools and tests that run no orchestrator).
    pub fn detached() -> Handle {
        let (tx, _rx) = mpsc::channel(1);
        Handle {
            tx,
            settings: Arc::new(Settings::default()),
            silences: Silences::default(),
            probe_views: ProbeViews::default(),
        }
    }
}

struct Inner {
    db: Db,
    /// The event log's one way in (bootplane's own news waits for its write).
    recorder: Recorder,
    clock: SharedClock,
    settings: Arc<Settings>,
    /// Machines being probed, each with the bell that cuts its backoff short.
    probing: Mutex<HashMap<Mac, Arc<Notify>>>,
    evaluating: Mutex<HashMap<String, bool>>,
    /// Control planes being reinstalled whose stale etcd member was already dealt with; a
    /// machine leaves the set when it is installed again, so one reinstall means one removal.
    forgotten: Mutex<HashSet<Mac>>,
    /// Clusters whose etcd looks lost, with when that was first seen.
    etcd_lost_since: Mutex<HashMap<String, i64>>,
    probes: Semaphore,
    /// Each cluster's Talos API client, kept while its secrets stay the same (`api_for`).
    apis: Mutex<HashMap<String, ApiClient>>,
    silences: Silences,
    probe_views: ProbeViews,
    tx: mpsc::Sender<Signal>,
}

/// A cluster's Talos API client and what it was made from.
struct ApiClient {
    /// SHA-256 of the secrets bundle the client certificate was issued from.
    secrets: [u8; 32],
    issued_ms: i64,
    api: TalosApi,
}

/// How long a Talos API client certificate is used before a fresh one is issued (they are
/// valid for a year; a day keeps them far from expiry and from a clock that jumped).
const API_CLIENT_REISSUE: Duration = Duration::from_secs(24 * 3600);

/// Starts the orchestrator; it runs until `cancel` fires.
pub fn spawn(
    db: Db,
    recorder: Recorder,
    settings: Settings,
    cancel: CancellationToken,
) -> (Handle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(4096);
    let settings = Arc::new(settings);
    let silences = Silences::default();
    let probe_views = ProbeViews::default();
    let inner = Arc::new(Inner {
        silences: silences.clone(),
        probe_views: probe_views.clone(),
        db,
        clock: recorder.clock().clone(),
        recorder,
        probes: Semaphore::new(settings.max_probes),
        settings: Arc::clone(&settings),
        probing: Mutex::default(),
        evaluating: Mutex::default(),
        forgotten: Mutex::default(),
        etcd_lost_since: Mutex::default(),
        apis: Mutex::default(),
        tx: tx.clone(),
    });
    let task = tokio::spawn(run(inner, rx, cancel));
    (
        Handle {
            tx,
            settings,
            silences,
            probe_views,
        },
        task,
    )
}

async fn run(inner: Arc<Inner>, mut rx: mpsc::Receiver<Signal>, cancel: CancellationToken) {
    // After a restart: machines waiting to report in are probed again.
    resume_probes(&inner, &cancel).await;
    loop {
        let signal = tokio::select! {
            _ = cancel.cancelled() => return,
            s = rx.recv() => s,
            _ = tokio::time::sleep(inner.settings.tick) => Some(Signal::Kick),
        };
        let Some(signal) = signal else { return };
        let mut evaluate = handle_signal(&inner, signal, &cancel);
        // Signals that queued meanwhile (a boot storm's configs served) share one evaluation:
        // each one's own work is done, the clusters are looked at once.
        while let Ok(signal) = rx.try_recv() {
            evaluate |= handle_signal(&inner, signal, &cancel);
        }
        if evaluate {
            evaluate_all(&inner, &cancel).await;
        }
    }
}

/// Does what `signal` asks for itself; whether the clusters should be evaluated after it.
fn handle_signal(inner: &Arc<Inner>, signal: Signal, cancel: &CancellationToken) -> bool {
    match signal {
        Signal::ConfigServed(mac, role) => {
            start_probe(inner, mac, cancel);
            role == Role::Controlplane
        }
        Signal::HandedOff(mac) => {
            start_probe(inner, mac, cancel);
            true
        }
        Signal::SignOfLife(mac) => {
            let bell = lock(&inner.probing).get(&mac).cloned();
            match bell {
                Some(bell) => bell.notify_one(),
                None => start_probe(inner, mac, cancel),
            }
            // A probe that succeeds kicks the evaluation itself.
            false
        }
        // Handled by the evaluation, which removes a control plane's stale etcd member
        // through a healthy control plane (or starts a new generation when none is left).
        Signal::Reinstalled(_) => true,
        Signal::Kick => true,
    }
}

async fn resume_probes(inner: &Arc<Inner>, cancel: &CancellationToken) {
    match inner.db.list_assigned_machines().await {
        Ok(machines) => {
            for m in machines {
                if m.state == Lifecycle::ConfigServed || m.handoff_at.is_some() {
                    start_probe(inner, m.mac, cancel);
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot list machines to resume probes"),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn system_time(ms: i64) -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// The Talos API client for `cluster`: the one made before while the stored secrets bundle is
/// the same and its certificate is younger than [`API_CLIENT_REISSUE`], else a new one.
/// Making one parses the bundle and issues a certificate, which a rack of nodes being probed
/// every few hundred milliseconds would otherwise pay on every probe.
async fn api_for(inner: &Inner, cluster: &str) -> Result<TalosApi, String> {
    let yaml = inner
        .db
        .cluster_secrets(cluster)
        .await
        .map_err(|e| materials::MaterialsError::from(e).to_string())?
        .ok_or_else(|| {
            materials::MaterialsError::NotInitialised(cluster.to_string()).to_string()
        })?;
    let digest: [u8; 32] = Sha256::digest(yaml.as_bytes()).into();
    let now = inner.clock.now_ms();
    let reissue_ms = i64::try_from(API_CLIENT_REISSUE.as_millis()).unwrap_or(i64::MAX);
    if let Some(made) = lock(&inner.apis).get(cluster) {
        if made.secrets == digest && (0..reissue_ms).contains(&now.saturating_sub(made.issued_ms)) {
            return Ok(made.api.clone());
        }
    }
    let bundle = crate::talos::secrets::SecretsBundle::from_yaml(&yaml)
        .map_err(|e| materials::MaterialsError::from(e).to_string())?;
    let api = TalosApi::new(&bundle, system_time(now)).map_err(|e| e.to_string())?;
    lock(&inner.apis).insert(
        cluster.to_string(),
        ApiClient {
            secrets: digest,
            issued_ms: now,
            api: api.clone(),
        },
    );
    Ok(api)
}

fn node_addr(inner: &Inner, ip: Ipv4Addr) -> SocketAddr {
    SocketAddr::from((ip, inner.settings.api_port))
}
