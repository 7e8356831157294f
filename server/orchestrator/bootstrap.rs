//! The bootstrap decision: when every control plane of a generation is up, one target is
//! chosen, persisted, marked and called, once.

use std::net::Ipv4Addr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::model::{BootstrapResult, EventKind, Lifecycle, Machine, Role};
use crate::talos::api::{ApiError, BootstrapOutcome};

use super::etcd::{etcd_lost, forget_stale_member, refused_before_starting};
use super::{api_for, lock, node_addr, Inner, Signal};

pub(super) async fn evaluate_all(inner: &Arc<Inner>, cancel: &CancellationToken) {
    let Ok(clusters) = inner.db.assigned_cluster_names().await else {
        return;
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

pub(super) fn control_planes(machines: &[Machine], cluster: &str) -> Vec<(Machine, Ipv4Addr)> {
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
pub(super) async fn evaluate(inner: &Arc<Inner>, cluster_name: &str) -> Result<(), String> {
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
        .list_control_planes(&cluster.name)
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
