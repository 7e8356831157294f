//! etcd after a rebuild: a cluster whose etcd is gone though its control planes are back
//! starts a new generation; a reinstalled control plane's old member is removed.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use crate::model::{EventKind, Lifecycle, Mac, Machine, Role};

use super::bootstrap::control_planes;
use super::{api_for, lock, node_addr, Inner, Signal};

/// Whether the cluster's etcd is gone although its control planes are back: every control
/// plane was reinstalled after `since` (the bootstrap), answers its Talos API, and reports its
/// etcd service not running (Talos keeps a control plane without etcd data waiting to join),
/// continuously for `etcd_lost_confirm`. A control plane that kept its etcd data runs etcd, and
/// one that does not answer proves nothing, so neither ever counts as lost.
pub(super) async fn etcd_lost(
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
pub(super) fn refused_before_starting(why: &str) -> bool {
    why.contains("bootstrap is not available yet") || why.contains("time is not in sync yet")
}

/// A control plane is being reinstalled: remove its old etcd member through a healthy
/// control plane, so the reinstalled node can join again.
pub(super) async fn forget_stale_member(inner: &Arc<Inner>, mac: Mac) -> Result<(), String> {
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
