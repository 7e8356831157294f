//! The machines table: the operator's inventory and each machine's lifecycle state, which
//! changes only through [`apply_step`] and the transition table in `model::lifecycle`.

use std::net::Ipv4Addr;

use sqlx::Row;

use crate::model::lifecycle::{transition, Step};
use crate::model::{DiskHandoff, EfiBinary, EventKind, Ipv4Cidr, Lifecycle, Mac, Machine};

use super::events::insert_event;
use super::{cluster_id, join_ips, parse_col, split_ips, Db, DbError};

impl Db {
    pub async fn list_machines(&self) -> Result<Vec<Machine>, DbError> {
        let rows = sqlx::query(MACHINE_SELECT_ORDERED)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(machine_from_row).collect()
    }

    /// Machines with a role (the orchestrator's work list): never the discovered ones, so its
    /// work per tick does not grow with what strangers on the LAN announce.
    pub async fn list_assigned_machines(&self) -> Result<Vec<Machine>, DbError> {
        let rows = sqlx::query(MACHINE_SELECT_ASSIGNED)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(machine_from_row).collect()
    }

    /// The names of the clusters that have an assigned machine.
    pub async fn assigned_cluster_names(&self) -> Result<Vec<String>, DbError> {
        let rows = sqlx::query(
            "SELECT DISTINCT c.name FROM machines m JOIN clusters c ON c.id = m.cluster_id
             WHERE m.role != 'unassigned' ORDER BY c.name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("name").map_err(DbError::from))
            .collect()
    }

    /// The control planes of `cluster` (what a bootstrap decision reads, not the workers).
    pub async fn list_control_planes(&self, cluster: &str) -> Result<Vec<Machine>, DbError> {
        let rows = sqlx::query(&format!(
            "{MACHINE_SELECT} WHERE c.name = ? AND m.role = 'controlplane' ORDER BY m.hostname, m.mac"
        ))
        .bind(cluster)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(machine_from_row).collect()
    }

    pub async fn get_machine(&self, mac: Mac) -> Result<Option<Machine>, DbError> {
        let row = sqlx::query(&format!("{MACHINE_SELECT} WHERE m.mac = ?"))
            .bind(mac.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(machine_from_row).transpose()
    }

    /// Adds a machine the operator describes; fails if the MAC is already known.
    pub async fn add_machine(&self, machine: &Machine, now: i64) -> Result<(), DbError> {
        let mut tx = self.write_tx().await?;
        let exists = sqlx::query("SELECT 1 FROM machines WHERE mac = ?")
            .bind(machine.mac.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            return Err(DbError::Exists(machine.mac));
        }
        let cluster_id = cluster_id(&mut tx, &machine.cluster).await?;
        check_unique(&mut tx, machine).await?;
        let insert = sqlx::query(
            "INSERT INTO machines (cluster_id, role, hostname, ip, prefix, gateway, dns,
                install_disk, disk_handoff, efi_binary, wipe, talos_version, diskless,
                installed, mac)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        );
        bind_operator_fields(insert, cluster_id, machine)
            .bind(machine.installed)
            .bind(machine.mac.to_string())
            .execute(&mut *tx)
            .await?;
        operator_edit(&mut tx, machine, &format!("added as {}", machine.role), now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Replaces the operator-owned fields of a known machine (not `installed`: only its node's
    /// evidence sets that, through a lifecycle step).
    pub async fn update_machine(&self, machine: &Machine, now: i64) -> Result<(), DbError> {
        let mut tx = self.write_tx().await?;
        let cluster_id = cluster_id(&mut tx, &machine.cluster).await?;
        check_unique(&mut tx, machine).await?;
        let before = sqlx::query(&format!("{MACHINE_SELECT} WHERE m.mac = ?"))
            .bind(machine.mac.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .as_ref()
            .map(machine_from_row)
            .transpose()?
            .ok_or(DbError::NotFound(machine.mac))?;
        let update = sqlx::query(
            "UPDATE machines SET cluster_id = ?, role = ?, hostname = ?, ip = ?, prefix = ?,
                gateway = ?, dns = ?, install_disk = ?, disk_handoff = ?, efi_binary = ?,
                wipe = ?, talos_version = ?, diskless = ?
             WHERE mac = ?",
        );
        let done = bind_operator_fields(update, cluster_id, machine)
            .bind(machine.mac.to_string())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(DbError::NotFound(machine.mac));
        }
        operator_edit(
            &mut tx,
            machine,
            &format!("set: {}", machine.changes_from(&before)),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes a machine; its event history stays (the log is append-only).
    pub async fn remove_machine(&self, mac: Mac, now: i64) -> Result<(), DbError> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query("DELETE FROM machines WHERE mac = ?")
            .bind(mac.to_string())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(DbError::NotFound(mac));
        }
        sqlx::query("DELETE FROM leases WHERE mac = ?")
            .bind(mac.to_string())
            .execute(&mut *tx)
            .await?;
        insert_event(&mut tx, mac, now, EventKind::Changed, "removed").await?;
        tx.commit().await?;
        Ok(())
    }

    /// Applies a lifecycle step to a machine (the transition table in `model::lifecycle`),
    /// logging the transition with its cause. Writes nothing (and logs nothing) when the
    /// machine stays where it is, except a reinstall, which is always logged. A step the table
    /// refuses is an error and changes nothing. Returns whether the state changed.
    pub async fn step(&self, mac: Mac, step: Step, cause: &str, now: i64) -> Result<bool, DbError> {
        let mut tx = self.write_tx().await?;
        let changed = apply_step(&mut tx, mac, step, cause, now).await?;
        tx.commit().await?;
        Ok(changed)
    }

    /// Records that an installed machine was sent to its disk now.
    pub async fn set_handoff(&self, mac: Mac, at: Option<i64>) -> Result<(), DbError> {
        sqlx::query("UPDATE machines SET handoff_at = ? WHERE mac = ?")
            .bind(at)
            .bind(mac.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A machine to be installed again: no longer installed, back to booting, its disk hand-off
    /// ended, with the reason logged (the lifecycle's reinstall step).
    pub async fn mark_reinstall(&self, mac: Mac, cause: &str, now: i64) -> Result<(), DbError> {
        self.step(mac, Step::Reinstall, cause, now)
            .await
            .map(|_| ())
    }
}

const MACHINE_SELECT: &str = "SELECT m.mac, c.name AS cluster, m.role, m.hostname, m.ip, m.prefix,
    m.gateway, m.dns, m.install_disk, m.disk_handoff, m.efi_binary, m.installed, m.first_seen,
    m.last_seen, m.last_arch, m.smbios_uuid, m.serial, m.wipe, m.state, m.state_since, m.handoff_at,
    m.talos_version, m.diskless
    FROM machines m JOIN clusters c ON c.id = m.cluster_id";

const MACHINE_SELECT_ORDERED: &str = "SELECT m.mac, c.name AS cluster, m.role, m.hostname, m.ip,
    m.prefix, m.gateway, m.dns, m.install_disk, m.disk_handoff, m.efi_binary, m.installed,
    m.first_seen, m.last_seen, m.last_arch, m.smbios_uuid, m.serial, m.wipe, m.state,
    m.state_since, m.handoff_at, m.talos_version, m.diskless
    FROM machines m JOIN clusters c ON c.id = m.cluster_id
    ORDER BY m.role = 'unassigned', m.hostname, m.mac";

const MACHINE_SELECT_ASSIGNED: &str = "SELECT m.mac, c.name AS cluster, m.role, m.hostname, m.ip,
    m.prefix, m.gateway, m.dns, m.install_disk, m.disk_handoff, m.efi_binary, m.installed,
    m.first_seen, m.last_seen, m.last_arch, m.smbios_uuid, m.serial, m.wipe, m.state,
    m.state_since, m.handoff_at, m.talos_version, m.diskless
    FROM machines m JOIN clusters c ON c.id = m.cluster_id
    WHERE m.role != 'unassigned'
    ORDER BY m.hostname, m.mac";

fn machine_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Machine, DbError> {
    let mac: String = row.try_get("mac")?;
    let mac: Mac = parse_col(&mac, "machine mac")?;
    let what = format!("machine {mac}");
    let corrupt = |why: String| DbError::Corrupt {
        what: what.clone(),
        why,
    };
    let role: String = row.try_get("role")?;
    let ip: Option<String> = row.try_get("ip")?;
    let prefix: Option<i64> = row.try_get("prefix")?;
    let ip = match (ip, prefix) {
        (Some(ip), Some(prefix)) => {
            let addr: Ipv4Addr = ip.parse().map_err(|_| corrupt(format!("bad ip {ip}")))?;
            let prefix = u8::try_from(prefix).map_err(|_| corrupt("bad prefix".into()))?;
            Some(Ipv4Cidr::new(addr, prefix).map_err(corrupt)?)
        }
        _ => None,
    };
    let gateway: Option<String> = row.try_get("gateway")?;
    let gateway = gateway
        .map(|g| g.parse::<Ipv4Addr>())
        .transpose()
        .map_err(|_| corrupt("bad gateway".into()))?;
    let dns: String = row.try_get("dns")?;
    let dns = split_ips(&dns).map_err(corrupt)?;
    let handoff: String = row.try_get("disk_handoff")?;
    let efi: Option<String> = row.try_get("efi_binary")?;
    let arch: Option<i64> = row.try_get("last_arch")?;
    Ok(Machine {
        mac,
        cluster: row.try_get("cluster")?,
        role: role.parse().map_err(corrupt)?,
        hostname: row.try_get("hostname")?,
        ip,
        gateway,
        dns,
        install_disk: row.try_get("install_disk")?,
        wipe: row.try_get::<bool, _>("wipe")?,
        disk_handoff: handoff.parse::<DiskHandoff>().map_err(corrupt)?,
        efi_binary: efi
            .map(|e| e.parse::<EfiBinary>())
            .transpose()
            .map_err(corrupt)?,
        talos_version: row.try_get("talos_version")?,
        diskless: row.try_get::<bool, _>("diskless")?,
        installed: row.try_get::<bool, _>("installed")?,
        state: {
            let state: String = row.try_get("state")?;
            state.parse::<Lifecycle>().map_err(corrupt)?
        },
        state_since: row.try_get("state_since")?,
        handoff_at: row.try_get("handoff_at")?,
        first_seen: row.try_get("first_seen")?,
        last_seen: row.try_get("last_seen")?,
        last_arch: arch.and_then(|a| u16::try_from(a).ok()),
        smbios_uuid: row.try_get("smbios_uuid")?,
        serial: row.try_get("serial")?,
    })
}

/// The one writer of a machine's lifecycle state: reads it, asks the transition table where
/// `step` leads, writes the state with what the step does to the installed flag and the disk
/// hand-off, and logs it, inside the caller's transaction.
async fn apply_step(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    mac: Mac,
    step: Step,
    cause: &str,
    now: i64,
) -> Result<bool, DbError> {
    let row = sqlx::query("SELECT state, installed FROM machines WHERE mac = ?")
        .bind(mac.to_string())
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(DbError::NotFound(mac))?;
    let from: String = row.try_get("state")?;
    let from: Lifecycle = parse_col(&from, "machine state")?;
    let installed: bool = row.try_get("installed")?;
    let to = transition(from, installed, step)?;
    let reinstall = step == Step::Reinstall;
    if to == from && !reinstall {
        return Ok(false);
    }
    sqlx::query(
        "UPDATE machines SET state = ?, state_since = ?, installed = COALESCE(?, installed),
            handoff_at = CASE WHEN ? THEN NULL ELSE handoff_at END
         WHERE mac = ?",
    )
    .bind(to.as_str())
    .bind(now)
    .bind(step.installed_after())
    .bind(reinstall)
    .bind(mac.to_string())
    .execute(&mut **tx)
    .await?;
    if reinstall {
        insert_event(tx, mac, now, EventKind::Reinstall, cause).await?;
    } else {
        insert_event(
            tx,
            mac,
            now,
            EventKind::State,
            &format!("{from} -> {to}: {cause}"),
        )
        .await?;
    }
    Ok(to != from)
}

async fn check_unique(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    machine: &Machine,
) -> Result<(), DbError> {
    if let Some(hostname) = &machine.hostname {
        let row = sqlx::query("SELECT mac FROM machines WHERE hostname = ? AND mac != ?")
            .bind(hostname)
            .bind(machine.mac.to_string())
            .fetch_optional(&mut **tx)
            .await?;
        if let Some(row) = row {
            let other: String = row.try_get(0)?;
            return Err(DbError::HostnameTaken {
                hostname: hostname.clone(),
                mac: parse_col(&other, "machine mac")?,
            });
        }
    }
    if let Some(ip) = machine.ip {
        let row = sqlx::query("SELECT mac FROM machines WHERE ip = ? AND mac != ?")
            .bind(ip.addr.to_string())
            .bind(machine.mac.to_string())
            .fetch_optional(&mut **tx)
            .await?;
        if let Some(row) = row {
            let other: String = row.try_get(0)?;
            return Err(DbError::IpTaken {
                ip: ip.addr,
                mac: parse_col(&other, "machine mac")?,
            });
        }
    }
    Ok(())
}

/// What every operator write of a machine ends with, inside its transaction: the `changed`
/// event (which also keeps the machine from the cap on unclaimed ones) and the lifecycle step
/// an edit is.
async fn operator_edit(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    machine: &Machine,
    detail: &str,
    now: i64,
) -> Result<(), DbError> {
    insert_event(tx, machine.mac, now, EventKind::Changed, detail).await?;
    let edit = Step::Edited { role: machine.role };
    apply_step(tx, machine.mac, edit, "operator edit", now).await?;
    Ok(())
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// Binds the fields an operator owns, in the order both the insert and the update name them:
/// cluster, role, hostname, address and prefix, gateway, DNS, install disk, disk hand-off, EFI
/// binary, wipe, Talos version, diskless.
fn bind_operator_fields<'q>(query: Query<'q>, cluster_id: i64, machine: &'q Machine) -> Query<'q> {
    query
        .bind(cluster_id)
        .bind(machine.role.as_str())
        .bind(&machine.hostname)
        .bind(machine.ip.map(|c| c.addr.to_string()))
        .bind(machine.ip.map(|c| i64::from(c.prefix)))
        .bind(machine.gateway.map(|g| g.to_string()))
        .bind(join_ips(&machine.dns))
        .bind(&machine.install_disk)
        .bind(machine.disk_handoff.as_str())
        .bind(machine.efi_binary.map(|e| e.as_str()))
        .bind(machine.wipe)
        .bind(&machine.talos_version)
        .bind(machine.diskless)
}
