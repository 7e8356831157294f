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
use crate::model::lifecycle::{self, Netboot, Requester, Step, WipeRule};
use crate::model::{BootstrapResult, EventKind, Lifecycle, Mac, Machine, Role};
use crate::ops::materials;
use crate::support::clock::SharedClock;
use crate::talos::api::{ApiError, BootstrapOutcome, TalosApi};

pub use crate::config::OrchestratorSettings as Settings;

/// Longest gap between probes of a machine handed to its disk.
const HANDOFF_PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Failed probes since a hand-off needed, besides `wipe_confirm`, before a network boot counts
/// as a wipe.
pub const WIPE_MIN_FAILED_PROBES: u32 = 3;

/// What the probes saw of a machine's Talos API since its latest disk hand-off: failures only,
/// each one a probe that got no answer with the cluster's certificates. An answer removes the
/// record (and ends the hand-off).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Silence {
    /// The hand-off this record belongs to (`Machine::handoff_at`).
    pub handoff_at: i64,
    pub first_failure_ms: i64,
    pub last_failure_ms: i64,
    pub failures: u32,
}

/// Silences per machine, shared by the probes (which write) and the boot surface (which asks
/// [`installed_machine_netbooted`]).
#[derive(Clone, Debug, Default)]
struct Silences(Arc<Mutex<HashMap<Mac, Silence>>>);

impl Silences {
    fn failed(&self, mac: Mac, handoff_at: i64, now: i64) {
        let mut map = lock(&self.0);
        let entry = map.entry(mac).or_insert(Silence {
            handoff_at,
            first_failure_ms: now,
            last_failure_ms: now,
            failures: 0,
        });
        if entry.handoff_at != handoff_at {
            *entry = Silence {
                handoff_at,
                first_failure_ms: now,
                last_failure_ms: now,
                failures: 0,
            };
        }
        entry.failures = entry.failures.saturating_add(1);
        entry.last_failure_ms = now;
    }

    fn answered(&self, mac: Mac) {
        lock(&self.0).remove(&mac);
    }

    fn get(&self, mac: Mac) -> Option<Silence> {
        lock(&self.0).get(&mac).copied()
    }
}

/// What other subsystems tell the orchestrator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// A machine fetched its config: start probing its Talos API.
    ConfigServed(Mac),
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
}

impl Handle {
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
    let inner = Arc::new(Inner {
        silences: silences.clone(),
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
        match signal {
            None => return,
            Some(Signal::ConfigServed(mac)) | Some(Signal::HandedOff(mac)) => {
                start_probe(&inner, mac, &cancel);
            }
            Some(Signal::SignOfLife(mac)) => {
                let bell = lock(&inner.probing).get(&mac).cloned();
                match bell {
                    Some(bell) => bell.notify_one(),
                    None => start_probe(&inner, mac, &cancel),
                }
                // A probe that succeeds kicks the evaluation itself.
                continue;
            }
            Some(Signal::Reinstalled(_)) => {
                // Handled by the evaluation below, which removes a control plane's stale
                // etcd member through a healthy control plane (or starts a new generation
                // when none is left).
            }
            Some(Signal::Kick) => {}
        }
        evaluate_all(&inner, &cancel).await;
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

/// Probes `mac`'s Talos API with backoff until it answers with the cluster's certificates,
/// or the machine no longer waits for it.
fn start_probe(inner: &Arc<Inner>, mac: Mac, cancel: &CancellationToken) {
    let bell = {
        let mut probing = lock(&inner.probing);
        if probing.contains_key(&mac) {
            return;
        }
        let bell = Arc::new(Notify::new());
        probing.insert(mac, Arc::clone(&bell));
        bell
    };
    let inner = Arc::clone(inner);
    let cancel = cancel.clone();
    tokio::spawn(async move {
        probe(&inner, mac, &bell, &cancel).await;
        lock(&inner.probing).remove(&mac);
    });
}

async fn probe(inner: &Arc<Inner>, mac: Mac, bell: &Notify, cancel: &CancellationToken) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let machine = match inner.db.get_machine(mac).await {
            Ok(Some(m)) => m,
            _ => return,
        };
        let waiting = machine.state == Lifecycle::ConfigServed || machine.handoff_at.is_some();
        let (Some(ip), true) = (machine.ip, waiting && machine.is_assigned()) else {
            return;
        };
        // `Err((e, true))`: the node itself gave no answer with the cluster's certificates
        // (the evidence a wipe needs); `false`: bootplane could not ask (no secrets).
        let answer = match api_for(inner, &machine.cluster).await {
            Ok(api) => {
                let _permit = inner.probes.acquire().await;
                api.version(node_addr(inner, ip.addr))
                    .await
                    .map_err(|e| (e.to_string(), true))
            }
            Err(e) => Err((e, false)),
        };
        match answer {
            Ok(version) => {
                let now = inner.clock.now_ms();
                let cause = format!(
                    "Talos API at {} answered with the cluster's certificates (Talos {})",
                    ip.addr, version.tag
                );
                tracing::info!(mac = %mac, %cause, "node reported in");
                inner
                    .recorder
                    .news(mac, EventKind::ReportedIn, &cause)
                    .await;
                // The silence goes first: a network boot read between the two must not see
                // an ended hand-off's failures.
                inner.silences.answered(mac);
                let _ = inner.db.set_handoff(mac, None).await;
                if let Err(e) = inner.db.step(mac, Step::ReportedIn, &cause, now).await {
                    tracing::warn!(mac = %mac, error = %e, "cannot mark machine ready");
                }
                let _ = inner.tx.try_send(Signal::Kick);
                return;
            }
            Err((e, node_failed)) => {
                tracing::debug!(mac = %mac, error = %e, "Talos API not answering yet");
                if let (Some(handoff_at), true) = (machine.handoff_at, node_failed) {
                    inner.silences.failed(mac, handoff_at, inner.clock.now_ms());
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
            _ = bell.notified() => {
                // The node is up and talking: probe now, and densely again.
                backoff = Duration::from_millis(125);
            }
        }
        // A machine just sent to its disk is watched closely: if its Talos API comes back
        // between two sparse probes, its next network boot would be taken for a wipe.
        let cap = if machine.handoff_at.is_some() {
            HANDOFF_PROBE_INTERVAL
        } else {
            inner.settings.probe_max_backoff
        };
        backoff = (backoff * 2).min(cap);
    }
}

async fn evaluate_all(inner: &Arc<Inner>, cancel: &CancellationToken) {
    let clusters = match inner.db.list_assigned_machines().await {
        Ok(machines) => machines
            .into_iter()
            .map(|m| m.cluster)
            .collect::<HashSet<_>>(),
        Err(_) => return,
    };
    for cluster in clusters {
        // `evaluating` maps a cluster under evaluation to whether another pass was asked for
        // meanwhile: a signal that arrives during a pass gets its own pass right after it,
        // instead of waiting for the next tick.
        {
            let mut evaluating = lock(&inner.evaluating);
            if let Some(again) = evaluating.get_mut(&cluster) {
                *again = true;
                continue;
            }
            evaluating.insert(cluster.clone(), false);
        }
        let inner = Arc::clone(inner);
        let cancel = cancel.clone();
        tokio::spawn(async move {
            loop {
                if !cancel.is_cancelled() {
                    if let Err(e) = evaluate(&inner, &cluster).await {
                        tracing::warn!(cluster = %cluster, error = %e, "cluster evaluation failed");
                    }
                }
                let mut evaluating = lock(&inner.evaluating);
                match evaluating.get_mut(&cluster) {
                    Some(again) if *again && !cancel.is_cancelled() => *again = false,
                    _ => {
                        evaluating.remove(&cluster);
                        return;
                    }
                }
            }
        });
    }
}

fn control_planes(machines: &[Machine], cluster: &str) -> Vec<(Machine, Ipv4Addr)> {
    let mut cps: Vec<(Machine, Ipv4Addr)> = machines
        .iter()
        .filter(|m| m.cluster == cluster && m.role == Role::Controlplane)
        .filter_map(|m| m.ip.map(|ip| (m.clone(), ip.addr)))
        .collect();
    // The fixed rule: the control plane with the lowest address is the bootstrap target.
    cps.sort_by_key(|(_, ip)| u32::from(*ip));
    cps
}

/// One pass over a cluster: new generation after a full wipe, then the bootstrap decision.
async fn evaluate(inner: &Arc<Inner>, cluster_name: &str) -> Result<(), String> {
    let db = &inner.db;
    let Some(cluster) = db
        .get_cluster(Some(cluster_name))
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(());
    };
    if cluster.initialised_at.is_none() {
        return Ok(());
    }
    let machines = db
        .list_assigned_machines()
        .await
        .map_err(|e| e.to_string())?;
    let cps = control_planes(&machines, &cluster.name);
    let need = if cluster.single_controlplane { 1 } else { 3 };
    let generation = cluster.generation;
    let record = db
        .get_bootstrap(&cluster.name, generation)
        .await
        .map_err(|e| e.to_string())?;

    if let Some(done) = record.as_ref().and_then(|r| r.outcome) {
        // Finished generation. If every control plane has since been wiped, etcd is gone with
        // them: the next bootstrap belongs to a new generation. Seen as every one reinstalled
        // since the bootstrap, answering, and none running etcd (`etcd_lost`).
        let since = cluster
            .bootstrapped_at
            .or(record.as_ref().map(|r| r.decided_at))
            .unwrap_or(0);
        // Every control plane marked un-installed is not enough by itself: etcd counts as lost
        // only once they are back, answer with the cluster's certificates and run no etcd, for
        // `etcd_lost_confirm` (whoever marked them, a rebuild or the wipe rule).
        let all_wiped = cps.len() >= need
            && done.started_etcd()
            && etcd_lost(inner, &cluster.name, &cps, since).await;
        if done.started_etcd() && !all_wiped {
            // Some control planes are being reinstalled while others run etcd: their old
            // members must go before they join again.
            for (m, _) in &cps {
                if m.installed {
                    lock(&inner.forgotten).remove(&m.mac);
                } else if lock(&inner.forgotten).insert(m.mac) {
                    if let Err(e) = forget_stale_member(inner, m.mac).await {
                        lock(&inner.forgotten).remove(&m.mac);
                        tracing::warn!(mac = %m.mac, error = %e, "stale etcd member not removed yet");
                    }
                }
            }
        }
        if done.started_etcd()
            && all_wiped
            && db
                .new_generation(&cluster.name, generation)
                .await
                .map_err(|e| e.to_string())?
        {
            {
                tracing::warn!(cluster = %cluster.name, generation = generation + 1,
                    "every control plane was wiped: the cluster will be bootstrapped again");
                // Evaluate the new generation now rather than at the next tick.
                let _ = inner.tx.try_send(Signal::Kick);
                for (m, _) in &cps {
                    inner
                        .recorder
                        .news(
                            m.mac,
                            EventKind::Bootstrap,
                            &format!(
                                "all control planes wiped: cluster generation {}",
                                generation + 1
                            ),
                        )
                        .await;
                }
            }
        }
        return Ok(());
    }

    if cps.len() < need {
        return Ok(());
    }
    if cps.len() > need && !cluster.single_controlplane {
        // More than three control planes is allowed; all of them must be up before bootstrap.
    }
    if cps.iter().any(|(m, _)| m.state != Lifecycle::Ready) {
        return Ok(());
    }
    let api = api_for(inner, &cluster.name).await?;

    let record = match record {
        Some(r) => r,
        None => {
            // Before choosing: does any control plane already run etcd with members?
            for (m, ip) in &cps {
                if let Ok(members) = api.etcd_members(node_addr(inner, *ip)).await {
                    if !members.is_empty() {
                        let now = inner.clock.now_ms();
                        let detail = format!(
                            "etcd already runs with {} member(s) on {}; no bootstrap needed",
                            members.len(),
                            ip
                        );
                        db.decide_bootstrap(&cluster.name, generation, m.mac, *ip, now)
                            .await
                            .map_err(|e| e.to_string())?;
                        db.finish_bootstrap(
                            &cluster.name,
                            generation,
                            BootstrapResult::Adopted,
                            &detail,
                            now,
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                        inner
                            .recorder
                            .news(m.mac, EventKind::Bootstrap, &detail)
                            .await;
                        return Ok(());
                    }
                }
            }
            let (target, ip) = &cps[0];
            let now = inner.clock.now_ms();
            let record = db
                .decide_bootstrap(&cluster.name, generation, target.mac, *ip, now)
                .await
                .map_err(|e| e.to_string())?;
            inner
                .recorder
                .news(
                    record.target_mac,
                    EventKind::Bootstrap,
                    &format!(
                        "chosen to bootstrap etcd for cluster {} generation {generation}",
                        cluster.name
                    ),
                )
                .await;
            record
        }
    };

    let target = node_addr(inner, record.target_ip);
    let now = inner.clock.now_ms();
    if let Some(called_at) = record.called_at {
        // A call went out (or may have, if we crashed): see whether it took effect.
        if let Ok(members) = api.etcd_members(target).await {
            if !members.is_empty() {
                let detail = format!(
                    "etcd runs on {} with {} member(s)",
                    record.target_ip,
                    members.len()
                );
                db.finish_bootstrap(
                    &cluster.name,
                    generation,
                    BootstrapResult::Bootstrapped,
                    &detail,
                    now,
                )
                .await
                .map_err(|e| e.to_string())?;
                inner
                    .recorder
                    .news(record.target_mac, EventKind::Bootstrap, &detail)
                    .await;
                return Ok(());
            }
        }
        let holdoff =
            i64::try_from(inner.settings.bootstrap_holdoff.as_millis()).unwrap_or(i64::MAX);
        if now - called_at < holdoff {
            return Ok(());
        }
    }

    db.bootstrap_calling(&cluster.name, generation, now)
        .await
        .map_err(|e| e.to_string())?;
    #[cfg(feature = "testkit")]
    if inner.settings.crash_before_bootstrap_call {
        tracing::error!("test hook: exiting after marking the Bootstrap call, before sending it");
        std::process::exit(86);
    }
    tracing::info!(cluster = %cluster.name, generation, target = %target, "calling Bootstrap");
    let result = api.bootstrap(target).await;
    let now = inner.clock.now_ms();
    let (outcome, detail) = match result {
        Ok(BootstrapOutcome::Bootstrapped) => (
            Some(BootstrapResult::Bootstrapped),
            format!("Bootstrap on {target}: etcd started"),
        ),
        Ok(BootstrapOutcome::AlreadyBootstrapped) => (
            Some(BootstrapResult::AlreadyBootstrapped),
            format!("Bootstrap on {target}: AlreadyExists (etcd data directory is not empty)"),
        ),
        Err(ApiError::Unreachable(why)) => {
            // No connection: the request never reached the node.
            db.bootstrap_not_started(&cluster.name, generation)
                .await
                .map_err(|e| e.to_string())?;
            (None, format!("Bootstrap on {target} not sent: {why}"))
        }
        Err(ApiError::NotReady(why)) if refused_before_starting(&why) => {
            // Talos answered that it did not start (still booting, clock not in sync).
            db.bootstrap_not_started(&cluster.name, generation)
                .await
                .map_err(|e| e.to_string())?;
            (
                None,
                format!("Bootstrap on {target} not started yet: {why}"),
            )
        }
        Err(ApiError::NotReady(why)) => {
            // No answer in time, or a transport error: the node may have started etcd.
            // The call stays marked, so the hold-off applies and etcd is checked first.
            (
                None,
                format!("Bootstrap on {target}: outcome unknown ({why}); waiting out the hold-off"),
            )
        }
        Err(e) => (
            Some(BootstrapResult::Failed),
            format!("Bootstrap on {target} failed: {e}"),
        ),
    };
    tracing::info!(cluster = %cluster.name, %detail, "bootstrap");
    inner
        .recorder
        .news(record.target_mac, EventKind::Bootstrap, &detail)
        .await;
    if let Some(outcome) = outcome {
        db.finish_bootstrap(&cluster.name, generation, outcome, &detail, now)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Whether the cluster's etcd is gone although its control planes are back: every control
/// plane was reinstalled after `since` (the bootstrap), answers its Talos API, and reports its
/// etcd service not running (Talos keeps a control plane without etcd data waiting to join),
/// continuously for `etcd_lost_confirm`. A control plane that kept its etcd data runs etcd, and
/// one that does not answer proves nothing, so neither ever counts as lost.
async fn etcd_lost(
    inner: &Arc<Inner>,
    cluster: &str,
    cps: &[(Machine, Ipv4Addr)],
    since: i64,
) -> bool {
    let lost = etcd_lost_now(inner, cluster, cps, since).await;
    let now = inner.clock.now_ms();
    let mut seen = lock(&inner.etcd_lost_since);
    if !lost {
        seen.remove(cluster);
        return false;
    }
    let first = *seen.entry(cluster.to_string()).or_insert(now);
    let confirm = i64::try_from(inner.settings.etcd_lost_confirm.as_millis()).unwrap_or(i64::MAX);
    if now - first < confirm {
        if now == first {
            tracing::info!(cluster, "every control plane was reinstalled and none runs etcd; confirming before a new bootstrap");
            // Look again as soon as the confirmation time is over.
            let tx = inner.tx.clone();
            let wait = inner.settings.etcd_lost_confirm + Duration::from_millis(50);
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let _ = tx.try_send(Signal::Kick);
            });
        }
        return false;
    }
    seen.remove(cluster);
    true
}

async fn etcd_lost_now(
    inner: &Arc<Inner>,
    cluster: &str,
    cps: &[(Machine, Ipv4Addr)],
    since: i64,
) -> bool {
    if cps.is_empty() || cps.iter().any(|(m, _)| m.state != Lifecycle::Ready) {
        return false;
    }
    for (m, _) in cps {
        match inner.db.last_event_at(m.mac, EventKind::Reinstall).await {
            Ok(Some(at)) if at > since => {}
            _ => return false,
        }
    }
    let Ok(api) = api_for(inner, cluster).await else {
        return false;
    };
    for (_, ip) in cps {
        let Ok(services) = api.services(node_addr(inner, *ip)).await else {
            return false;
        };
        match services.iter().find(|s| s.id == "etcd") {
            Some(etcd) if etcd.state != "Running" => {}
            _ => return false,
        }
    }
    true
}

/// Talos's refusals that guarantee the node did not start bootstrapping.
fn refused_before_starting(why: &str) -> bool {
    why.contains("bootstrap is not available yet") || why.contains("time is not in sync yet")
}

/// A control plane is being reinstalled: remove its old etcd member through a healthy
/// control plane, so the reinstalled node can join again.
async fn forget_stale_member(inner: &Arc<Inner>, mac: Mac) -> Result<(), String> {
    let db = &inner.db;
    let Some(machine) = db.get_machine(mac).await.map_err(|e| e.to_string())? else {
        return Ok(());
    };
    if machine.role != Role::Controlplane {
        return Ok(());
    }
    let Some(hostname) = machine.hostname.clone() else {
        return Ok(());
    };
    let machines = db
        .list_assigned_machines()
        .await
        .map_err(|e| e.to_string())?;
    let api = api_for(inner, &machine.cluster).await?;
    // Never remove a live member: if the machine's own Talos API answers with the cluster's
    // certificates and runs etcd, it was not wiped, whatever marked it.
    if let Some(ip) = machine.ip {
        if let Ok(services) = api.services(node_addr(inner, ip.addr)).await {
            if services
                .iter()
                .any(|s| s.id == "etcd" && s.state == "Running")
            {
                return Err(format!(
                    "{hostname} answers with the cluster's certificates and runs etcd: its member is alive and is not removed"
                ));
            }
        }
    }
    let healthy = control_planes(&machines, &machine.cluster)
        .into_iter()
        .filter(|(m, _)| m.mac != mac && m.state == Lifecycle::Ready);
    for (peer, ip) in healthy {
        let addr = node_addr(inner, ip);
        let Ok(members) = api.etcd_members(addr).await else {
            continue;
        };
        match members.iter().find(|m| m.hostname == hostname) {
            Some(member) => {
                api.etcd_remove_member(addr, member.id)
                    .await
                    .map_err(|e| e.to_string())?;
                let detail = format!(
                    "removed stale etcd member {:x} ({hostname}) through {} ({ip})",
                    member.id,
                    peer.hostname.as_deref().unwrap_or("?")
                );
                tracing::info!(mac = %mac, %detail, "etcd member removed");
                inner
                    .recorder
                    .news(mac, EventKind::EtcdMemberRemoved, &detail)
                    .await;
            }
            None => {
                inner
                    .recorder
                    .news(
                        mac,
                        EventKind::EtcdMemberRemoved,
                        &format!("no etcd member named {hostname} on {ip}; nothing to remove"),
                    )
                    .await;
            }
        }
        return Ok(());
    }
    Ok(())
}

/// Applies what a network boot of an installed machine means (`model::lifecycle::netboot`,
/// the one decision): a disk hand-off, or a reinstall because its disk does not boot. Returns
/// true to reinstall.
///
/// The request is unauthenticated, so it decides nothing by itself: only a requester whose
/// address evidence names the machine itself (the host's neighbour table, or our own lease)
/// starts or continues a hand-off, and a reinstall also needs the probes of the machine's Talos
/// API to have failed the cluster's mTLS since the hand-off, at least
/// [`WIPE_MIN_FAILED_PROBES`] times and for at least `wipe_confirm`. A machine whose disk
/// really is wiped comes back to the network each time it is handed off, and is reinstalled
/// once the silence has lasted long enough.
pub async fn installed_machine_netbooted(
    db: &Db,
    handle: &Handle,
    machine: &Machine,
    requester: Requester,
    now: i64,
) -> Result<bool, crate::db::DbError> {
    let settings = handle.settings();
    let rule = WipeRule {
        window_ms: i64::try_from(settings.wipe_window.as_millis()).unwrap_or(i64::MAX),
        confirm_ms: i64::try_from(settings.wipe_confirm.as_millis()).unwrap_or(i64::MAX),
        min_failures: WIPE_MIN_FAILED_PROBES,
    };
    let silence = machine
        .handoff_at
        .and_then(|at| {
            handle
                .silences
                .get(machine.mac)
                .filter(|s| s.handoff_at == at)
                .map(|s| lifecycle::Silence {
                    failures: s.failures,
                    silent_ms: s.last_failure_ms - at,
                })
        })
        .unwrap_or_default();
    match lifecycle::netboot(requester, machine.handoff_at, silence, rule, now) {
        Netboot::DiskUntouched => {
            match requester {
                Requester::Other(other) => tracing::warn!(mac = %machine.mac, requester = %other,
                    "network boot for an installed machine from an address that is another MAC's; disk hand-off, nothing changed"),
                // No evidence that the machine itself asked (a routed requester): its disk,
                // and nothing starts or counts toward a wipe. Such sites rebuild on request.
                _ => tracing::info!(mac = %machine.mac,
                    "network boot of an installed machine from an address with no neighbour entry or lease of ours; disk hand-off, not watched for a wipe"),
            }
            Ok(false)
        }
        Netboot::Reinstall => {
            let at = machine.handoff_at.unwrap_or(now);
            let cause = format!(
                "network-booted again {} s after being sent to its disk, and its Talos API failed the cluster's mTLS on all {} probes since: the disk does not boot (wiped)",
                (now - at) / 1000,
                silence.failures
            );
            db.mark_reinstall(machine.mac, &cause, now).await?;
            handle.signal(Signal::Reinstalled(machine.mac));
            Ok(true)
        }
        Netboot::DiskDuringHandoff => {
            // Not enough evidence yet: to the disk again, keeping the first hand-off's time.
            // A disk that boots answers the probe; a wiped one brings the machine back here.
            tracing::info!(mac = %machine.mac, failures = silence.failures, silent_s = silence.silent_ms / 1000,
                "network boot during a disk hand-off; its Talos API has not been silent long enough to call it wiped");
            handle.signal(Signal::HandedOff(machine.mac));
            Ok(false)
        }
        Netboot::DiskStartHandoff => {
            db.set_handoff(machine.mac, Some(now)).await?;
            handle.signal(Signal::HandedOff(machine.mac));
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_000_000;

    async fn installed(db: &Db) -> Machine {
        let mut m = Machine::discovered("52:54:00:00:00:01".parse().unwrap());
        m.role = Role::Controlplane;
        m.installed = true;
        m.hostname = Some("cp1".into());
        db.add_machine(&m, T0).await.unwrap();
        m
    }

    fn handle(confirm_secs: u64) -> Handle {
        let mut handle = Handle::detached();
        handle.settings = Arc::new(Settings {
            wipe_confirm: Duration::from_secs(confirm_secs),
            ..Settings::default()
        });
        handle
    }

    #[tokio::test]
    async fn a_network_boot_alone_never_reinstalls() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).await.unwrap();
        let m = installed(&db).await;
        let h = handle(30);
        // First: the disk hand-off, remembered.
        assert!(
            !installed_machine_netbooted(&db, &h, &m, Requester::Itself, T0)
                .await
                .unwrap()
        );
        let m = db.get_machine(m.mac).await.unwrap().unwrap();
        assert_eq!(m.handoff_at, Some(T0));
        // Again and again inside the window, with no failed probe: to the disk each time, and
        // the first hand-off's time is kept.
        for n in 1..5 {
            let again = installed_machine_netbooted(&db, &h, &m, Requester::Itself, T0 + n)
                .await
                .unwrap();
            assert!(!again);
        }
        let m = db.get_machine(m.mac).await.unwrap().unwrap();
        assert!(m.installed && m.handoff_at == Some(T0), "{m:?}");
        // Failures, but not for long enough: still the disk.
        for n in 0..5 {
            h.silences.failed(m.mac, T0, T0 + 1_000 * n);
        }
        assert!(
            !installed_machine_netbooted(&db, &h, &m, Requester::Itself, T0 + 5_000)
                .await
                .unwrap()
        );
        // Failures for a different (older) hand-off do not count for this one.
        let h2 = handle(1);
        h2.silences.failed(m.mac, T0 - 50_000, T0 - 40_000);
        h2.silences.failed(m.mac, T0 - 50_000, T0 - 30_000);
        h2.silences.failed(m.mac, T0 - 50_000, T0 - 20_000);
        assert!(
            !installed_machine_netbooted(&db, &h2, &m, Requester::Itself, T0 + 5_000)
                .await
                .unwrap()
        );
        assert!(db.get_machine(m.mac).await.unwrap().unwrap().installed);
    }

    #[tokio::test]
    async fn a_network_boot_without_evidence_of_the_requester_starts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).await.unwrap();
        let m = installed(&db).await;
        let h = handle(0);
        for requester in [
            Requester::Unknown,
            Requester::Other("52:54:00:00:00:66".parse().unwrap()),
        ] {
            assert!(!installed_machine_netbooted(&db, &h, &m, requester, T0)
                .await
                .unwrap());
        }
        let m = db.get_machine(m.mac).await.unwrap().unwrap();
        assert_eq!(m.handoff_at, None, "no hand-off started: {m:?}");
    }

    #[tokio::test]
    async fn sustained_silence_since_the_handoff_reinstalls_and_an_answer_clears_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).await.unwrap();
        let m = installed(&db).await;
        let h = handle(30);
        assert!(
            !installed_machine_netbooted(&db, &h, &m, Requester::Itself, T0)
                .await
                .unwrap()
        );
        let m = db.get_machine(m.mac).await.unwrap().unwrap();
        for n in 1..=31 {
            h.silences.failed(m.mac, T0, T0 + 1_000 * n);
        }
        // A request whose address is another MAC's changes nothing, whatever the silence.
        let stranger: Mac = "52:54:00:00:00:66".parse().unwrap();
        assert!(
            !installed_machine_netbooted(&db, &h, &m, Requester::Other(stranger), T0 + 32_000)
                .await
                .unwrap()
        );
        assert!(db.get_machine(m.mac).await.unwrap().unwrap().installed);
        // An answer in between ends the silence.
        h.silences.answered(m.mac);
        assert!(
            !installed_machine_netbooted(&db, &h, &m, Requester::Itself, T0 + 32_000)
                .await
                .unwrap()
        );
        for n in 1..=31 {
            h.silences.failed(m.mac, T0, T0 + 1_000 * n);
        }
        assert!(
            installed_machine_netbooted(&db, &h, &m, Requester::Itself, T0 + 32_000)
                .await
                .unwrap()
        );
        let m = db.get_machine(m.mac).await.unwrap().unwrap();
        assert!(!m.installed, "{m:?}");
    }
}
