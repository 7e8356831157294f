//! Saving, reinstalling and removing machines: the writes behind every surface's machine
//! actions, with the confirmation a consequential change needs.

use super::checks::check_against_inventory;
use super::input::{apply_machine_input, MachineInput};
use super::lan::Lan;
use super::OpsError;
use crate::db::{Db, DbError};
use crate::model::{Lifecycle, Mac, Machine, Role};

/// What a save did.
#[derive(Clone, Debug)]
pub struct Saved {
    pub machine: Machine,
    /// The machine reinstalls at its next network boot.
    pub reinstall: bool,
}

/// Adds (when `create`) or changes a machine. A role change on a control plane of a
/// bootstrapped cluster needs `confirm`: it takes an etcd member away and reinstalls.
pub async fn save_machine(
    db: &Db,
    lan: Option<&Lan>,
    mac: Mac,
    input: &MachineInput,
    create: bool,
    confirm: bool,
    now: i64,
) -> Result<Saved, OpsError> {
    let existing = db.get_machine(mac).await?;
    let old = match (&existing, create) {
        (Some(_), true) => {
            return Err(OpsError::field(
                "mac",
                format!("{mac} is already in the inventory"),
            ))
        }
        (None, false) => return Err(OpsError::NotFound(mac)),
        (Some(m), false) => m.clone(),
        (None, true) => new_machine(db, mac).await?,
    };
    let m = checked(db, lan, &old, input).await?;

    let mut reinstall = false;
    let was_serving_cp = old.role == Role::Controlplane
        && (old.installed || matches!(old.state, Lifecycle::Installed | Lifecycle::Ready));
    if !create && was_serving_cp && m.role != old.role {
        let bootstrapped = db
            .get_cluster(Some(&old.cluster))
            .await?
            .is_some_and(|c| c.bootstrapped_at.is_some());
        if bootstrapped {
            if !confirm {
                return Err(OpsError::NeedsConfirmation(format!(
                    "{} is a control plane of a bootstrapped cluster and holds an etcd member. \
                     Making it {} removes that member (bootplane removes it through a healthy \
                     control plane) and reinstalls the machine at its next network boot: its \
                     disk is wiped. Until a third control plane is back, etcd runs on the \
                     remaining members and cannot lose another.",
                    old.hostname.as_deref().unwrap_or(&mac.to_string()),
                    if m.role == Role::Unassigned {
                        "unassigned".to_string()
                    } else {
                        format!("a {}", m.role)
                    },
                )));
            }
            if m.role != Role::Unassigned {
                reinstall = true;
            }
        }
    }
    let installs_now = !create && installs_now(&old, &m);
    if installs_now {
        reinstall = true;
    }
    if create {
        db.add_machine(&m, now).await?;
    } else {
        db.update_machine(&m, now).await?;
    }
    if reinstall {
        let cause = if installs_now {
            "operator made a diskless machine install to disk"
        } else {
            "operator changed the role of a control plane"
        };
        db.mark_reinstall(mac, cause, now).await?;
    }
    let machine = db.get_machine(mac).await?.ok_or(OpsError::NotFound(mac))?;
    Ok(Saved { machine, reinstall })
}

/// Checks the fields of a machine to add as `save_machine` would, without a MAC address and
/// without saving: a form whose MAC is refused still hears about every other field.
pub async fn check_new_machine(
    db: &Db,
    lan: Option<&Lan>,
    input: &MachineInput,
) -> Result<(), OpsError> {
    // A locally administered address no NIC ships with, so it matches no stored machine.
    let placeholder = new_machine(db, Mac([0x02, 0, 0, 0, 0, 0])).await?;
    checked(db, lan, &placeholder, input).await.map(|_| ())
}

/// A machine to add: nothing assigned yet, in the first cluster.
async fn new_machine(db: &Db, mac: Mac) -> Result<Machine, OpsError> {
    let mut m = Machine::discovered(mac);
    if let Some(first) = db.get_cluster(None).await? {
        m.cluster = first.name;
    }
    Ok(m)
}

/// `old` with `input` applied, checked against every field rule and the inventory's rules.
async fn checked(
    db: &Db,
    lan: Option<&Lan>,
    old: &Machine,
    input: &MachineInput,
) -> Result<Machine, OpsError> {
    let mut m = old.clone();
    apply_machine_input(&mut m, input)?;
    let others = db.list_machines().await?;
    check_against_inventory(db, lan, &m, &others).await?;
    Ok(m)
}

/// Whether a change from `old` to `new` makes a diskless machine that Talos ran on install to
/// disk: nothing is on its disk, so it is marked for install at its next network boot (a
/// worker: no etcd member is involved).
pub fn installs_now(old: &Machine, new: &Machine) -> bool {
    old.diskless && !new.diskless && new.is_assigned() && old.installed
}

/// Marks an assigned machine for reinstall at its next network boot.
pub async fn reinstall_machine(db: &Db, mac: Mac, now: i64) -> Result<Machine, OpsError> {
    let m = db.get_machine(mac).await?.ok_or(OpsError::NotFound(mac))?;
    if !m.is_assigned() {
        return Err(OpsError::Refused(format!(
            "{mac} has no role; assign it first"
        )));
    }
    db.mark_reinstall(mac, "operator asked for a reinstall", now)
        .await?;
    db.get_machine(mac).await?.ok_or(OpsError::NotFound(mac))
}

/// Removes a machine from the inventory (its event history is kept).
pub async fn remove_machine(db: &Db, mac: Mac, now: i64) -> Result<(), OpsError> {
    match db.remove_machine(mac, now).await {
        Ok(()) => Ok(()),
        Err(DbError::NotFound(mac)) => Err(OpsError::NotFound(mac)),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Pool;
    use crate::ops::cluster;

    fn lan() -> Lan {
        Lan {
            subnet: "10.0.0.0/24".parse().unwrap(),
            pool: Some(Pool {
                start: "10.0.0.200".parse().unwrap(),
                end: "10.0.0.250".parse().unwrap(),
            }),
            appliance: vec!["10.0.0.2".parse().unwrap()],
            kernel: crate::talos::kernel::Additions::offline(),
            default_version: crate::config::DEFAULT_TALOS_VERSION.into(),
        }
    }

    fn node(role: &str, n: u8) -> MachineInput {
        MachineInput {
            role: Some(role.into()),
            hostname: Some(format!("{role}-{n}")),
            ip: Some(format!("10.0.0.{}/24", 10 + n)),
            ..Default::default()
        }
    }

    fn mac_n(n: u8) -> Mac {
        Mac([0x52, 0x54, 0, 0, 0, n])
    }

    async fn fresh() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).await.unwrap();
        (dir, db)
    }

    #[tokio::test]
    async fn inventory_rules_refuse_duplicates_the_pool_other_subnets_and_a_fourth_control_plane() {
        let (_dir, db) = fresh().await;
        for n in 1..=3 {
            save_machine(
                &db,
                Some(&lan()),
                mac_n(n),
                &node("controlplane", n),
                true,
                false,
                1,
            )
            .await
            .unwrap();
        }
        let refused = |input: MachineInput, field: &'static str, words: &'static str| {
            let db = db.clone();
            async move {
                let err = save_machine(&db, Some(&lan()), mac_n(9), &input, true, false, 2)
                    .await
                    .unwrap_err();
                let msg = err
                    .for_field(field)
                    .unwrap_or_else(|| panic!("{field}: {err}"));
                assert!(msg.contains(words), "{field}: {msg}");
            }
        };
        refused(node("controlplane", 4), "role", "three control planes").await;
        refused(
            MachineInput {
                ip: Some("10.0.0.2/24".into()),
                ..node("worker", 4)
            },
            "ip",
            "this appliance's own address",
        )
        .await;
        refused(
            MachineInput {
                hostname: Some("controlplane-1".into()),
                ..node("worker", 4)
            },
            "hostname",
            "already used by 52:54:00:00:00:01",
        )
        .await;
        refused(
            MachineInput {
                ip: Some("10.0.0.11/24".into()),
                ..node("worker", 4)
            },
            "ip",
            "already used",
        )
        .await;
        refused(
            MachineInput {
                ip: Some("10.0.0.210/24".into()),
                ..node("worker", 4)
            },
            "ip",
            "dynamic pool",
        )
        .await;
        refused(
            MachineInput {
                ip: Some("192.168.7.4/24".into()),
                ..node("worker", 4)
            },
            "ip",
            "outside the LAN subnet",
        )
        .await;
        assert!(
            db.get_machine(mac_n(9)).await.unwrap().is_none(),
            "nothing stored"
        );
        save_machine(
            &db,
            Some(&lan()),
            mac_n(9),
            &node("worker", 4),
            true,
            false,
            3,
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_vip_outside_a_control_planes_subnet_is_refused_beside_the_vip_or_the_address() {
        let (_dir, db) = fresh().await;
        for n in 1..=2 {
            save_machine(
                &db,
                None,
                mac_n(n),
                &node("controlplane", n),
                true,
                false,
                1,
            )
            .await
            .unwrap();
        }
        let with_vip = |vip: &str| cluster::ClusterInput {
            vip: Some(vip.into()),
            nameservers: Some("none".into()),
            ..Default::default()
        };
        let err = cluster::init_cluster(&db, &with_vip("192.168.50.10"), 2)
            .await
            .unwrap_err();
        let msg = err.for_field("vip").unwrap_or_else(|| panic!("vip: {err}"));
        assert!(msg.contains("controlplane-1's subnet 10.0.0.0/24"), "{msg}");
        cluster::init_cluster(&db, &with_vip("10.0.0.5"), 3)
            .await
            .unwrap();
        let err = cluster::update_cluster(&db, &with_vip("192.168.50.10"), 4)
            .await
            .unwrap_err();
        assert!(err.for_field("vip").is_some(), "{err}");
        // Secrets are adopted at initialisation only, whichever surface sends them.
        let adopt = cluster::ClusterInput {
            import_secrets: Some("cluster:\n  id: x\n".into()),
            ..Default::default()
        };
        let err = cluster::update_cluster(&db, &adopt, 4).await.unwrap_err();
        let msg = err.for_field("import_secrets").unwrap_or_default();
        assert!(
            msg.contains("only when the cluster is initialised"),
            "{err}"
        );
        let moved = MachineInput {
            ip: Some("10.1.0.12/24".into()),
            ..node("controlplane", 2)
        };
        let err = save_machine(&db, None, mac_n(2), &moved, false, false, 5)
            .await
            .unwrap_err();
        let msg = err.for_field("ip").unwrap_or_else(|| panic!("ip: {err}"));
        assert!(
            msg.contains("VIP 10.0.0.5") && msg.contains("10.1.0.0/24"),
            "{msg}"
        );
        let worker = MachineInput {
            role: Some("worker".into()),
            ..moved
        };
        save_machine(&db, None, mac_n(2), &worker, false, false, 6)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn role_change_of_a_bootstrapped_control_plane_needs_confirmation_and_reinstalls() {
        let (_dir, db) = fresh().await;
        let saved = save_machine(
            &db,
            None,
            mac_n(1),
            &node("controlplane", 1),
            true,
            false,
            1,
        )
        .await
        .unwrap();
        // The node's evidence: its Talos API answered.
        let evidence = crate::model::lifecycle::Step::ReportedIn;
        db.step(saved.machine.mac, evidence, "reported in", 2)
            .await
            .unwrap();
        let worker = MachineInput {
            role: Some("worker".into()),
            ..Default::default()
        };
        let cluster = db.get_cluster(None).await.unwrap().unwrap().name;
        let ip = "10.0.0.11".parse().unwrap();
        db.decide_bootstrap(&cluster, 1, mac_n(1), ip, 3)
            .await
            .unwrap();
        db.finish_bootstrap(
            &cluster,
            1,
            crate::model::BootstrapResult::Bootstrapped,
            "test",
            4,
        )
        .await
        .unwrap();
        let err = save_machine(&db, None, mac_n(1), &worker, false, false, 5)
            .await
            .unwrap_err();
        match &err {
            OpsError::NeedsConfirmation(q) => {
                assert!(q.contains("etcd member") && q.contains("reinstall"), "{q}")
            }
            other => panic!("expected a question, got {other}"),
        }
        assert_eq!(
            db.get_machine(mac_n(1)).await.unwrap().unwrap().role,
            Role::Controlplane
        );
        let saved = save_machine(&db, None, mac_n(1), &worker, false, true, 6)
            .await
            .unwrap();
        assert!(saved.reinstall);
        assert_eq!(saved.machine.role, Role::Worker);
        assert!(!saved.machine.installed, "marked for reinstall");
    }

    #[tokio::test]
    async fn a_diskless_machine_that_ran_is_installed_at_its_next_boot_once_it_may_install() {
        let (_dir, db) = fresh().await;
        let diskless = MachineInput {
            diskless: Some(true),
            talos_version: Some("v1.14.0-rc.1".into()),
            ..node("worker", 4)
        };
        let saved = save_machine(&db, None, mac_n(4), &diskless, true, false, 1)
            .await
            .unwrap();
        assert!(saved.machine.diskless);
        db.step(
            mac_n(4),
            crate::model::lifecycle::Step::ReportedIn,
            "reported in",
            2,
        )
        .await
        .unwrap();
        let installs = MachineInput {
            diskless: Some(false),
            ..Default::default()
        };
        let saved = save_machine(&db, None, mac_n(4), &installs, false, false, 3)
            .await
            .unwrap();
        assert!(saved.reinstall, "nothing is on its disk");
        assert!(!saved.machine.installed && !saved.machine.diskless);
        assert_eq!(saved.machine.state, Lifecycle::Booting);
    }
}
