//! What a network boot of an installed machine means: a disk hand-off, or a reinstall once
//! its Talos API has been silent long enough.

use super::{Handle, Signal};
use crate::db::Db;
use crate::model::lifecycle::{self, Netboot, Requester, WipeRule};
use crate::model::Machine;

/// Failed probes since a hand-off needed, besides `wipe_confirm`, before a network boot counts
/// as a wipe.
pub const WIPE_MIN_FAILED_PROBES: u32 = 3;

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
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::model::{Mac, Role};
    use crate::orchestrator::Settings;

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
