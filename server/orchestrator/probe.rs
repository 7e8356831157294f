//! Probes of installed machines' Talos API: whether a node answers with the cluster's
//! certificates, and how long it has been silent since its disk hand-off.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{api_for, lock, node_addr, Inner, Signal};
use crate::model::lifecycle::Step;
use crate::model::timeline::ProbeView;
use crate::model::{EventKind, Lifecycle, Mac};

/// Longest gap between probes of a machine handed to its disk.
const HANDOFF_PROBE_INTERVAL: Duration = Duration::from_secs(1);

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
pub(super) struct Silences(Arc<Mutex<HashMap<Mac, Silence>>>);

impl Silences {
    pub(super) fn failed(&self, mac: Mac, handoff_at: i64, now: i64) {
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

    pub(super) fn answered(&self, mac: Mac) {
        lock(&self.0).remove(&mac);
    }

    pub(super) fn get(&self, mac: Mac) -> Option<Silence> {
        lock(&self.0).get(&mac).copied()
    }
}

/// What each machine's running probe has seen so far, for the operator's boot timeline.
#[derive(Clone, Debug, Default)]
pub(super) struct ProbeViews(Arc<Mutex<HashMap<Mac, ProbeView>>>);

impl ProbeViews {
    fn failed(&self, mac: Mac, target: String, error: String, now: i64) {
        let mut map = lock(&self.0);
        let view = map.entry(mac).or_insert_with(|| ProbeView {
            target: target.clone(),
            since_ms: now,
            attempts: 0,
            last_error: None,
        });
        if view.target != target {
            *view = ProbeView {
                target,
                since_ms: now,
                attempts: 0,
                last_error: None,
            };
        }
        view.attempts = view.attempts.saturating_add(1);
        view.last_error = Some(error);
    }

    fn ended(&self, mac: Mac) {
        lock(&self.0).remove(&mac);
    }

    pub(super) fn get(&self, mac: Mac) -> Option<ProbeView> {
        lock(&self.0).get(&mac).cloned()
    }
}

/// Probes `mac`'s Talos API with backoff until it answers with the cluster's certificates,
/// or the machine no longer waits for it.
pub(super) fn start_probe(inner: &Arc<Inner>, mac: Mac, cancel: &CancellationToken) {
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
        inner.probe_views.ended(mac);
        lock(&inner.probing).remove(&mac);
    });
}

pub(super) async fn probe(inner: &Arc<Inner>, mac: Mac, bell: &Notify, cancel: &CancellationToken) {
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
                let cause = format!(
                    "Talos API at {} answered with the cluster's certificates (Talos {})",
                    ip.addr, version.tag
                );
                tracing::info!(mac = %mac, %cause, "node reported in");
                inner
                    .recorder
                    .news(mac, EventKind::ReportedIn, &cause)
                    .await;
                // Read after the news is stored, so the step it causes never carries an earlier
                // time than the report (the log lists events by time).
                let now = inner.clock.now_ms();
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
                let target = node_addr(inner, ip.addr).to_string();
                inner
                    .probe_views
                    .failed(mac, target, probe_error(&e), inner.clock.now_ms());
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

/// A probe failure as an operator reads it: the cause at the bottom of the transport error
/// ("connection refused"), not tonic's wrapping of it; else the error itself, cut short.
fn probe_error(error: &str) -> String {
    match crate::support::net_error::plain(error) {
        Some(words) => words.to_string(),
        None => error.chars().take(200).collect(),
    }
}
