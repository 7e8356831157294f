//! The only module that speaks SQL. Rows become domain types at this edge.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Row, SqlitePool};

use crate::model::lifecycle::{transition, Forbidden, Step};
use crate::model::{
    BootstrapRecord, BootstrapResult, Cluster, DiskHandoff, EfiBinary, Event, EventKind, Ipv4Cidr,
    LanFacts, Lifecycle, Mac, Machine, NodeSubnets, PatchRecord, PatchScope, ReportTargets,
};

mod assets;
mod auth;
mod boot_log;
mod views;
pub use auth::{SessionRow, TokenRow, UserRow};

pub const DB_FILE: &str = "bootplane.db";

/// How many never-assigned discovered machines are kept (the newest seen); older ones are
/// pruned with their events. Anyone on the LAN can invent MACs, so this bounds what strangers
/// can make bootplane store and load into its inventory.
pub const DISCOVERED_CAP: i64 = 1000;

/// Machines nobody ever claimed: unassigned, still `discovered`, and never written by an
/// operator (every operator write logs a `changed` event). Only these are pruned by the cap.
const UNCLAIMED: &str = "SELECT m.mac FROM machines m
    WHERE m.role = 'unassigned' AND m.state = 'discovered'
      AND NOT EXISTS (SELECT 1 FROM events e WHERE e.mac = m.mac AND e.kind = 'changed')";

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("machine {0} is not in the inventory")]
    NotFound(Mac),
    #[error("machine {0} is already in the inventory (use `machines set` to change it)")]
    Exists(Mac),
    #[error("hostname {hostname} is already used by {mac}")]
    HostnameTaken { hostname: String, mac: Mac },
    #[error("address {ip} is already used by {mac}")]
    IpTaken { ip: Ipv4Addr, mac: Mac },
    #[error("cluster '{0}' does not exist")]
    NoCluster(String),
    #[error("cluster '{0}' is already initialised (it has a secrets bundle)")]
    ClusterInitialised(String),
    #[error("a cluster named '{0}' already exists")]
    ClusterNameTaken(String),
    #[error("no patch named '{0}' at that scope")]
    NoPatch(String),
    #[error("stored row for {what} is corrupt: {why}")]
    Corrupt { what: String, why: String },
    #[error("{0}")]
    Lifecycle(#[from] Forbidden),
}

/// A lease handed out in full-DHCP mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRow {
    pub mac: Mac,
    pub ip: Ipv4Addr,
    pub expires_at: i64,
    pub hostname: Option<String>,
}

/// What a protocol handler saw of a machine; applied in batches by the event writer.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub mac: Mac,
    pub at: i64,
    pub kind: EventKind,
    pub detail: String,
    pub arch: Option<u16>,
    pub smbios_uuid: Option<String>,
    pub serial: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Db {
    pool: SqlitePool,
}

impl Db {
    /// Opens (creating if needed) `<data_dir>/bootplane.db` and applies pending migrations.
    pub async fn open(data_dir: &Path) -> Result<Db, DbError> {
        std::fs::create_dir_all(data_dir).map_err(|source| DbError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let file = data_dir.join(DB_FILE);
        restrict_permissions(&file).map_err(|source| DbError::DataDir {
            path: file.clone(),
            source,
        })?;
        let options = SqliteConnectOptions::new()
            .filename(&file)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            // A connection must come back out of every transaction. When the disk fills, SQLite
            // rolls a transaction back itself and sqlx's own ROLLBACK then fails, so sqlx still
            // counts the connection as inside one and refuses every later `BEGIN` on it (the
            // pool would keep it for ever). Such a connection is closed (SQLite rolls back
            // whatever is open) and the pool opens a fresh one when it needs it.
            .after_release(|conn, _meta| {
                Box::pin(async move {
                    // Ordered after the rollback a dropped transaction queued on this connection.
                    conn.ping().await?;
                    let clean = !conn.is_in_transaction();
                    if !clean {
                        tracing::warn!("closing a database connection left inside a transaction");
                    }
                    Ok(clean)
                })
            })
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Db { pool })
    }

    /// The counter triggers bump whenever a commit changes what `list_machines` returns, apart
    /// from the first/last-seen stamps (migration 0008); any process's commits count.
    pub async fn inventory_version(&self) -> Result<i64, DbError> {
        let row = sqlx::query("SELECT version FROM inventory_version WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>(0)?)
    }

    /// A write transaction that takes SQLite's write lock up front (`BEGIN IMMEDIATE`), so a
    /// concurrent writer makes it wait out the busy timeout instead of failing with
    /// "database is locked" when a deferred transaction tries to upgrade its read lock.
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, DbError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// A connection whose next commits are durable on power loss: `synchronous=FULL` syncs
    /// the WAL at each commit (the pool's `NORMAL` leaves the last commits to the next
    /// checkpoint). For the records a second Bootstrap depends on: the target of a generation,
    /// the call mark, the outcome, the generation counter. Give it back with [`Db::relax`].
    async fn durable_conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Sqlite>, DbError> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query("PRAGMA synchronous = FULL")
            .execute(&mut *conn)
            .await?;
        Ok(conn)
    }

    /// Back to the pool's setting before the connection goes back to the pool.
    async fn relax(mut conn: sqlx::pool::PoolConnection<sqlx::Sqlite>) {
        if let Err(e) = sqlx::query("PRAGMA synchronous = NORMAL")
            .execute(&mut *conn)
            .await
        {
            tracing::debug!(error = %e, "could not set synchronous back to NORMAL; closing the connection");
            conn.close_on_drop();
        }
    }

    pub async fn acquire(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Sqlite>, DbError> {
        Ok(self.pool.acquire().await?)
    }

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
        sqlx::query(
            "INSERT INTO machines (mac, cluster_id, role, hostname, ip, prefix, gateway, dns,
                install_disk, disk_handoff, efi_binary, installed, wipe, talos_version, diskless)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(machine.mac.to_string())
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
        .bind(machine.installed)
        .bind(machine.wipe)
        .bind(&machine.talos_version)
        .bind(machine.diskless)
        .execute(&mut *tx)
        .await?;
        insert_event(
            &mut tx,
            machine.mac,
            now,
            EventKind::Changed,
            &format!("added as {}", machine.role),
        )
        .await?;
        let edit = Step::Edited { role: machine.role };
        apply_step(&mut tx, machine.mac, edit, "operator edit", now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Replaces the operator-owned fields of a known machine (not `installed`: only its node's
    /// evidence sets that, through a lifecycle step).
    pub async fn update_machine(&self, machine: &Machine, now: i64) -> Result<(), DbError> {
        let mut tx = self.write_tx().await?;
        let cluster_id = cluster_id(&mut tx, &machine.cluster).await?;
        check_unique(&mut tx, machine).await?;
        let done = sqlx::query(
            "UPDATE machines SET cluster_id = ?, role = ?, hostname = ?, ip = ?, prefix = ?,
                gateway = ?, dns = ?, install_disk = ?, disk_handoff = ?, efi_binary = ?,
                wipe = ?, talos_version = ?, diskless = ?
             WHERE mac = ?",
        )
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
        .bind(machine.mac.to_string())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(DbError::NotFound(machine.mac));
        }
        insert_event(
            &mut tx,
            machine.mac,
            now,
            EventKind::Changed,
            &format!("set: role {}", machine.role),
        )
        .await?;
        let edit = Step::Edited { role: machine.role };
        apply_step(&mut tx, machine.mac, edit, "operator edit", now).await?;
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

    /// Applies a batch of observations in one transaction: unknown MACs become discovered
    /// machines, known ones get their last-seen facts refreshed, every observation is logged.
    /// Beyond [`DISCOVERED_CAP`] unclaimed machines, the ones seen longest ago go, with their
    /// events.
    pub async fn record(&self, batch: &[Observation]) -> Result<(), DbError> {
        self.record_capped(batch, DISCOVERED_CAP).await
    }

    async fn record_capped(&self, batch: &[Observation], cap: i64) -> Result<(), DbError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_tx().await?;
        // Discovered machines join the first cluster (the only one, in the common case).
        let default_cluster: i64 = sqlx::query("SELECT id FROM clusters ORDER BY id LIMIT 1")
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        let mut discovered = false;
        for obs in batch {
            let mac = obs.mac.to_string();
            let inserted = sqlx::query(
                "INSERT INTO machines (mac, cluster_id, first_seen, last_seen)
                 VALUES (?, ?, ?, ?) ON CONFLICT (mac) DO NOTHING",
            )
            .bind(&mac)
            .bind(default_cluster)
            .bind(obs.at)
            .bind(obs.at)
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 1 {
                discovered = true;
                insert_event(&mut tx, obs.mac, obs.at, EventKind::Discovered, "").await?;
            }
            sqlx::query(
                "UPDATE machines SET
                    first_seen = COALESCE(first_seen, ?),
                    last_seen = MAX(COALESCE(last_seen, 0), ?),
                    last_arch = COALESCE(?, last_arch),
                    smbios_uuid = COALESCE(?, smbios_uuid),
                    serial = COALESCE(?, serial)
                 WHERE mac = ?",
            )
            .bind(obs.at)
            .bind(obs.at)
            .bind(obs.arch.map(i64::from))
            .bind(&obs.smbios_uuid)
            .bind(&obs.serial)
            .bind(&mac)
            .execute(&mut *tx)
            .await?;
            insert_event(&mut tx, obs.mac, obs.at, obs.kind, &obs.detail).await?;
        }
        if discovered {
            prune_unclaimed(&mut tx, cap).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn events(&self, mac: Mac, limit: i64) -> Result<Vec<Event>, DbError> {
        let rows = sqlx::query(
            "SELECT mac, at, kind, detail FROM
                (SELECT id, mac, at, kind, detail FROM events WHERE mac = ? ORDER BY id DESC LIMIT ?)
             ORDER BY at, id",
        )
        .bind(mac.to_string())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let kind: String = row.try_get("kind")?;
                Ok(Event {
                    mac,
                    at: row.try_get("at")?,
                    kind: parse_col(&kind, "event kind")?,
                    detail: row.try_get("detail")?,
                })
            })
            .collect()
    }

    pub async fn load_leases(&self) -> Result<Vec<LeaseRow>, DbError> {
        let rows = sqlx::query("SELECT mac, ip, expires_at, hostname FROM leases ORDER BY mac")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let mac: String = row.try_get("mac")?;
                let ip: String = row.try_get("ip")?;
                Ok(LeaseRow {
                    mac: parse_col(&mac, "lease mac")?,
                    ip: parse_col(&ip, "lease ip")?,
                    expires_at: row.try_get("expires_at")?,
                    hostname: row.try_get("hostname")?,
                })
            })
            .collect()
    }

    /// Writes lease changes in one transaction; `None` for a MAC deletes its lease.
    pub async fn save_leases(&self, changes: &[(Mac, Option<LeaseRow>)]) -> Result<(), DbError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_tx().await?;
        for (mac, lease) in changes {
            sqlx::query("DELETE FROM leases WHERE mac = ?")
                .bind(mac.to_string())
                .execute(&mut *tx)
                .await?;
            if let Some(lease) = lease {
                // A stale row may still hold the address under another MAC.
                sqlx::query("DELETE FROM leases WHERE ip = ?")
                    .bind(lease.ip.to_string())
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO leases (mac, ip, expires_at, hostname) VALUES (?, ?, ?, ?)",
                )
                .bind(lease.mac.to_string())
                .bind(lease.ip.to_string())
                .bind(lease.expires_at)
                .bind(&lease.hostname)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// The cluster named `name`, or the only cluster when `name` is `None`.
    /// The Talos version a cluster is set to, if any: one column, for the boot path.
    pub async fn cluster_talos_version(&self, name: &str) -> Result<Option<String>, DbError> {
        let row = sqlx::query("SELECT talos_version FROM clusters WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => row.try_get(0)?,
            None => None,
        })
    }

    pub async fn get_cluster(&self, name: Option<&str>) -> Result<Option<Cluster>, DbError> {
        let row = match name {
            Some(name) => {
                sqlx::query(&format!("{CLUSTER_SELECT} WHERE name = ?"))
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?
            }
            None => {
                sqlx::query(&format!("{CLUSTER_SELECT} ORDER BY id LIMIT 1"))
                    .fetch_optional(&self.pool)
                    .await?
            }
        };
        row.as_ref().map(cluster_from_row).transpose()
    }

    /// Initialises the cluster `current` (renaming it to `cluster.name`) with its settings
    /// and secrets bundle. Refuses a cluster that already has secrets.
    pub async fn init_cluster(
        &self,
        current: &str,
        cluster: &Cluster,
        secrets_yaml: &str,
        now: i64,
    ) -> Result<(), DbError> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query("SELECT id, secrets IS NOT NULL AS has FROM clusters WHERE name = ?")
            .bind(current)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| DbError::NoCluster(current.to_string()))?;
        if row.try_get::<bool, _>("has")? {
            return Err(DbError::ClusterInitialised(current.to_string()));
        }
        let id: i64 = row.try_get("id")?;
        if cluster.name != current {
            let taken = sqlx::query("SELECT 1 FROM clusters WHERE name = ?")
                .bind(&cluster.name)
                .fetch_optional(&mut *tx)
                .await?;
            if taken.is_some() {
                return Err(DbError::ClusterNameTaken(cluster.name.clone()));
            }
        }
        sqlx::query("UPDATE clusters SET name = ?, secrets = ?, initialised_at = ? WHERE id = ?")
            .bind(&cluster.name)
            .bind(secrets_yaml)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        write_cluster_settings(&mut tx, id, cluster).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Replaces the settings of cluster `current` (its name may change too).
    pub async fn update_cluster(&self, current: &str, cluster: &Cluster) -> Result<(), DbError> {
        let mut tx = self.write_tx().await?;
        let id = cluster_id(&mut tx, current).await?;
        if cluster.name != current {
            let taken = sqlx::query("SELECT 1 FROM clusters WHERE name = ?")
                .bind(&cluster.name)
                .fetch_optional(&mut *tx)
                .await?;
            if taken.is_some() {
                return Err(DbError::ClusterNameTaken(cluster.name.clone()));
            }
            sqlx::query("UPDATE clusters SET name = ? WHERE id = ?")
                .bind(&cluster.name)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        write_cluster_settings(&mut tx, id, cluster).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Where nodes push their events and kernel log, as `serve` last advertised them (none
    /// before the first `serve`).
    pub async fn report_targets(&self) -> Result<ReportTargets, DbError> {
        let row =
            sqlx::query("SELECT events_endpoint, kernel_log_url FROM appliance_facts WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?;
        Ok(match row {
            Some(row) => ReportTargets {
                events_endpoint: row.try_get("events_endpoint")?,
                kernel_log_url: row.try_get("kernel_log_url")?,
            },
            None => ReportTargets::default(),
        })
    }

    /// The LAN the last `serve` answered on (none before the first `serve`).
    pub async fn lan_facts(&self) -> Result<Option<LanFacts>, DbError> {
        let row = sqlx::query(
            "SELECT lan_subnet, lan_pool, own_addresses FROM appliance_facts WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let corrupt = |why: String| DbError::Corrupt {
            what: "appliance facts".into(),
            why,
        };
        let subnet: String = row.try_get("lan_subnet")?;
        let pool: Option<String> = row.try_get("lan_pool")?;
        let pool = match pool {
            None => None,
            Some(text) => {
                let parsed = text
                    .split_once('-')
                    .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
                Some(parsed.ok_or_else(|| corrupt(format!("bad pool {text}")))?)
            }
        };
        Ok(Some(LanFacts {
            subnet: subnet.parse().map_err(corrupt)?,
            pool,
            own: split_ips(&row.try_get::<String, _>("own_addresses")?).map_err(corrupt)?,
        }))
    }

    /// Records what `serve` puts on the LAN: where nodes report, and the LAN's rules for
    /// machine addresses. Written at start, only when it changed.
    pub async fn set_appliance_facts(
        &self,
        targets: &ReportTargets,
        lan: &LanFacts,
        now: i64,
    ) -> Result<(), DbError> {
        if self.report_targets().await? == *targets && self.lan_facts().await?.as_ref() == Some(lan)
        {
            return Ok(());
        }
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO appliance_facts
                (id, events_endpoint, kernel_log_url, lan_subnet, lan_pool, own_addresses,
                 updated_at)
             VALUES (1, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET events_endpoint = excluded.events_endpoint,
                kernel_log_url = excluded.kernel_log_url, lan_subnet = excluded.lan_subnet,
                lan_pool = excluded.lan_pool, own_addresses = excluded.own_addresses,
                updated_at = excluded.updated_at",
        )
        .bind(&targets.events_endpoint)
        .bind(&targets.kernel_log_url)
        .bind(lan.subnet.to_string())
        .bind(lan.pool.map(|(a, b)| format!("{a}-{b}")))
        .bind(join_ips(&lan.own))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The cluster's secrets bundle (talosctl's secrets.yaml), if it has one.
    pub async fn cluster_secrets(&self, name: &str) -> Result<Option<String>, DbError> {
        let row = sqlx::query("SELECT secrets FROM clusters WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| DbError::NoCluster(name.to_string()))?;
        Ok(row.try_get("secrets")?)
    }

    /// The cluster's patches in application order: cluster, controlplane, worker, machine.
    pub async fn list_patches(&self, cluster: &str) -> Result<Vec<PatchRecord>, DbError> {
        let rows = sqlx::query(
            "SELECT p.scope, p.mac, p.position, p.name, p.body FROM patches p
             JOIN clusters c ON c.id = p.cluster_id WHERE c.name = ?
             ORDER BY CASE p.scope WHEN 'cluster' THEN 0 WHEN 'controlplane' THEN 1
                      WHEN 'worker' THEN 2 ELSE 3 END, p.mac, p.position, p.id",
        )
        .bind(cluster)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let scope: String = row.try_get("scope")?;
                let mac: Option<String> = row.try_get("mac")?;
                Ok(PatchRecord {
                    scope: parse_col(&scope, "patch scope")?,
                    mac: mac.map(|m| parse_col(&m, "patch mac")).transpose()?,
                    position: row.try_get("position")?,
                    name: row.try_get("name")?,
                    body: row.try_get("body")?,
                })
            })
            .collect()
    }

    /// Adds a patch at the end of its scope, or replaces the body of the one with that name.
    pub async fn put_patch(
        &self,
        cluster: &str,
        patch: &PatchRecord,
        now: i64,
    ) -> Result<(), DbError> {
        let mut tx = self.write_tx().await?;
        let id = cluster_id(&mut tx, cluster).await?;
        let mac = patch.mac.map(|m| m.to_string());
        let existing = sqlx::query(
            "SELECT id FROM patches WHERE cluster_id = ? AND scope = ? AND mac IS ? AND name = ?",
        )
        .bind(id)
        .bind(patch.scope.as_str())
        .bind(&mac)
        .bind(&patch.name)
        .fetch_optional(&mut *tx)
        .await?;
        match existing {
            Some(row) => {
                let patch_id: i64 = row.try_get(0)?;
                sqlx::query("UPDATE patches SET body = ? WHERE id = ?")
                    .bind(&patch.body)
                    .bind(patch_id)
                    .execute(&mut *tx)
                    .await?;
            }
            None => {
                let next: i64 = sqlx::query(
                    "SELECT COALESCE(MAX(position), 0) + 1 FROM patches
                     WHERE cluster_id = ? AND scope = ? AND mac IS ?",
                )
                .bind(id)
                .bind(patch.scope.as_str())
                .bind(&mac)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
                sqlx::query(
                    "INSERT INTO patches (cluster_id, scope, mac, position, name, body, created_at)
                     VALUES (?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(id)
                .bind(patch.scope.as_str())
                .bind(&mac)
                .bind(next)
                .bind(&patch.name)
                .bind(&patch.body)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn remove_patch(
        &self,
        cluster: &str,
        scope: PatchScope,
        mac: Option<Mac>,
        name: &str,
    ) -> Result<(), DbError> {
        let mut tx = self.write_tx().await?;
        let id = cluster_id(&mut tx, cluster).await?;
        let done = sqlx::query(
            "DELETE FROM patches WHERE cluster_id = ? AND scope = ? AND mac IS ? AND name = ?",
        )
        .bind(id)
        .bind(scope.as_str())
        .bind(mac.map(|m| m.to_string()))
        .bind(name)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(DbError::NoPatch(name.to_string()));
        }
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

    /// Appends events about machines in one transaction: bootplane's own news (a probe's
    /// answer, a bootstrap, a config fetched), as opposed to sightings on the network.
    /// (Only `inventory::Recorder` calls this, so events reach the log in the order they were
    /// queued.) Unlike [`Db::record`], nothing is discovered and no last-seen stamp changes.
    pub async fn append_events(&self, events: &[Event]) -> Result<(), DbError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_tx().await?;
        for e in events {
            insert_event(&mut tx, e.mac, e.at, e.kind, &e.detail).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn get_bootstrap(
        &self,
        cluster: &str,
        generation: i64,
    ) -> Result<Option<BootstrapRecord>, DbError> {
        let row = sqlx::query(
            "SELECT b.* FROM bootstraps b JOIN clusters c ON c.id = b.cluster_id
             WHERE c.name = ? AND b.generation = ?",
        )
        .bind(cluster)
        .bind(generation)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(bootstrap_from_row).transpose()
    }

    pub async fn bootstrap_history(&self, cluster: &str) -> Result<Vec<BootstrapRecord>, DbError> {
        let rows = sqlx::query(
            "SELECT b.* FROM bootstraps b JOIN clusters c ON c.id = b.cluster_id
             WHERE c.name = ? ORDER BY b.generation",
        )
        .bind(cluster)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(bootstrap_from_row).collect()
    }

    /// Persists the bootstrap target of a generation, unless one is already chosen: the
    /// stored choice always wins and is returned.
    pub async fn decide_bootstrap(
        &self,
        cluster: &str,
        generation: i64,
        target: Mac,
        target_ip: Ipv4Addr,
        now: i64,
    ) -> Result<BootstrapRecord, DbError> {
        let mut conn = self.durable_conn().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let id = cluster_id(&mut tx, cluster).await?;
        sqlx::query(
            "INSERT INTO bootstraps (cluster_id, generation, target_mac, target_ip, decided_at)
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (cluster_id, generation) DO NOTHING",
        )
        .bind(id)
        .bind(generation)
        .bind(target.to_string())
        .bind(target_ip.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query("SELECT * FROM bootstraps WHERE cluster_id = ? AND generation = ?")
            .bind(id)
            .bind(generation)
            .fetch_one(&mut *tx)
            .await?;
        let record = bootstrap_from_row(&row)?;
        tx.commit().await?;
        Self::relax(conn).await;
        Ok(record)
    }

    /// Written and committed before a Bootstrap call goes out.
    pub async fn bootstrap_calling(
        &self,
        cluster: &str,
        generation: i64,
        now: i64,
    ) -> Result<(), DbError> {
        self.mark_bootstrap_call(cluster, generation, Some(now))
            .await
    }

    /// The node answered that it did not start bootstrapping (or the call never reached it):
    /// the mark is cleared so the same target can be asked again without the hold-off.
    pub async fn bootstrap_not_started(
        &self,
        cluster: &str,
        generation: i64,
    ) -> Result<(), DbError> {
        self.mark_bootstrap_call(cluster, generation, None).await
    }

    /// Sets (counting a call) or clears the call mark of an unfinished generation.
    async fn mark_bootstrap_call(
        &self,
        cluster: &str,
        generation: i64,
        called_at: Option<i64>,
    ) -> Result<(), DbError> {
        let mut conn = self.durable_conn().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let id = cluster_id(&mut tx, cluster).await?;
        sqlx::query(
            "UPDATE bootstraps SET called_at = ?1,
                calls = calls + (CASE WHEN ?1 IS NULL THEN 0 ELSE 1 END)
             WHERE cluster_id = ?2 AND generation = ?3 AND outcome IS NULL",
        )
        .bind(called_at)
        .bind(id)
        .bind(generation)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Self::relax(conn).await;
        Ok(())
    }

    pub async fn finish_bootstrap(
        &self,
        cluster: &str,
        generation: i64,
        outcome: BootstrapResult,
        detail: &str,
        now: i64,
    ) -> Result<(), DbError> {
        let mut conn = self.durable_conn().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let id = cluster_id(&mut tx, cluster).await?;
        sqlx::query(
            "UPDATE bootstraps SET outcome = ?, detail = ?, finished_at = ?
             WHERE cluster_id = ? AND generation = ?",
        )
        .bind(outcome.as_str())
        .bind(detail)
        .bind(now)
        .bind(id)
        .bind(generation)
        .execute(&mut *tx)
        .await?;
        if outcome.started_etcd() {
            sqlx::query(
                "UPDATE clusters SET bootstrapped_at = COALESCE(bootstrapped_at, ?) WHERE id = ?",
            )
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Self::relax(conn).await;
        Ok(())
    }

    /// Starts a new cluster generation (every control plane was wiped): the next bootstrap
    /// is a new decision. Refused while the current generation is not finished.
    pub async fn new_generation(&self, cluster: &str, expected: i64) -> Result<bool, DbError> {
        let mut conn = self.durable_conn().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let id = cluster_id(&mut tx, cluster).await?;
        let done = sqlx::query(
            "UPDATE clusters SET generation = generation + 1, bootstrapped_at = NULL
             WHERE id = ? AND generation = ?",
        )
        .bind(id)
        .bind(expected)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Self::relax(conn).await;
        Ok(done.rows_affected() == 1)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The database holds every cluster secret: create it readable by its owner only (0600), and
/// tighten an existing file. SQLite gives its -wal and -shm files the database file's mode.
fn restrict_permissions(file: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(file)?;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
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

/// Keeps the `cap` unclaimed machines seen most recently; the rest go, their events with them.
async fn prune_unclaimed(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    cap: i64,
) -> Result<(), DbError> {
    let doomed = format!(
        "{UNCLAIMED} ORDER BY m.last_seen DESC, m.first_seen DESC, m.mac LIMIT -1 OFFSET ?"
    );
    // The same machines each time: deleting their events removes no `changed` event.
    for table in ["events", "boot_log", "machines"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE mac IN ({doomed})"))
            .bind(cap)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

fn parse_col<T: FromStr>(text: &str, what: &str) -> Result<T, DbError>
where
    T::Err: std::fmt::Display,
{
    text.parse().map_err(|e: T::Err| DbError::Corrupt {
        what: what.to_string(),
        why: e.to_string(),
    })
}

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

fn bootstrap_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<BootstrapRecord, DbError> {
    let mac: String = row.try_get("target_mac")?;
    let ip: String = row.try_get("target_ip")?;
    Ok(BootstrapRecord {
        generation: row.try_get("generation")?,
        target_mac: parse_col(&mac, "bootstrap target")?,
        target_ip: parse_col(&ip, "bootstrap target ip")?,
        decided_at: row.try_get("decided_at")?,
        called_at: row.try_get("called_at")?,
        calls: row.try_get("calls")?,
        outcome: {
            let outcome: Option<String> = row.try_get("outcome")?;
            outcome
                .map(|o| parse_col(&o, "bootstrap outcome"))
                .transpose()?
        },
        detail: row.try_get("detail")?,
        finished_at: row.try_get("finished_at")?,
    })
}

const CLUSTER_SELECT: &str = "SELECT name, endpoint, vip, talos_version, kubernetes_version,
    install_image, pod_subnets, service_subnets, dns_domain, node_subnets, nameservers,
    initialised_at, generation, single_controlplane, bootstrapped_at FROM clusters";

fn cluster_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Cluster, DbError> {
    let name: String = row.try_get("name")?;
    let vip: Option<String> = row.try_get("vip")?;
    let vip = vip
        .map(|v| v.parse::<Ipv4Addr>())
        .transpose()
        .map_err(|_| DbError::Corrupt {
            what: format!("cluster {name}"),
            why: "bad vip".into(),
        })?;
    let split = |text: String| -> Vec<String> {
        text.split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    Ok(Cluster {
        endpoint: row.try_get("endpoint")?,
        vip,
        talos_version: row.try_get("talos_version")?,
        kubernetes_version: row.try_get("kubernetes_version")?,
        install_image: row.try_get("install_image")?,
        pod_subnets: split(row.try_get("pod_subnets")?),
        service_subnets: split(row.try_get("service_subnets")?),
        dns_domain: row.try_get("dns_domain")?,
        node_subnets: match row.try_get::<Option<String>, _>("node_subnets")? {
            None => NodeSubnets::Auto,
            Some(text) if text.is_empty() => NodeSubnets::Off,
            Some(text) => NodeSubnets::Given(split(text)),
        },
        nameservers: split_ips(&row.try_get::<String, _>("nameservers")?).map_err(|why| {
            DbError::Corrupt {
                what: format!("cluster {name}"),
                why: format!("bad nameservers: {why}"),
            }
        })?,
        initialised_at: row.try_get("initialised_at")?,
        generation: row.try_get("generation")?,
        single_controlplane: row.try_get::<bool, _>("single_controlplane")?,
        bootstrapped_at: row.try_get("bootstrapped_at")?,
        name,
    })
}

async fn write_cluster_settings(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    id: i64,
    c: &Cluster,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE clusters SET endpoint = ?, vip = ?, talos_version = ?, kubernetes_version = ?,
            install_image = ?, pod_subnets = ?, service_subnets = ?, dns_domain = ?,
            node_subnets = ?, nameservers = ?, single_controlplane = ?
         WHERE id = ?",
    )
    .bind(&c.endpoint)
    .bind(c.vip.map(|v| v.to_string()))
    .bind(&c.talos_version)
    .bind(&c.kubernetes_version)
    .bind(&c.install_image)
    .bind(c.pod_subnets.join(","))
    .bind(c.service_subnets.join(","))
    .bind(&c.dns_domain)
    .bind(match &c.node_subnets {
        NodeSubnets::Auto => None,
        NodeSubnets::Off => Some(String::new()),
        NodeSubnets::Given(list) => Some(list.join(",")),
    })
    .bind(join_ips(&c.nameservers))
    .bind(c.single_controlplane)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn join_ips(ips: &[Ipv4Addr]) -> String {
    ips.iter()
        .map(|ip| ip.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn split_ips(text: &str) -> Result<Vec<Ipv4Addr>, String> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("bad dns entry {s}")))
        .collect()
}

async fn cluster_id(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    name: &str,
) -> Result<i64, DbError> {
    let row = sqlx::query("SELECT id FROM clusters WHERE name = ?")
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?;
    match row {
        Some(row) => Ok(row.try_get(0)?),
        None => Err(DbError::NoCluster(name.to_string())),
    }
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

async fn insert_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    mac: Mac,
    at: i64,
    kind: EventKind,
    detail: &str,
) -> Result<(), DbError> {
    sqlx::query("INSERT INTO events (mac, at, kind, detail) VALUES (?, ?, ?, ?)")
        .bind(mac.to_string())
        .bind(at)
        .bind(kind.as_str())
        .bind(detail)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a durable commit costs beside the pool's ordinary one, on this disk. A benchmark
    /// (its figures are in the commit that made the bootstrap records durable), not a timed
    /// test: `cargo test --release --lib durable_commit_cost -- --ignored --nocapture`.
    #[tokio::test]
    #[ignore = "benchmark"]
    async fn durable_commit_cost() {
        let dir = tempfile::tempdir_in(".").unwrap();
        let db = Db::open(dir.path()).await.unwrap();
        let mut c = db.get_cluster(None).await.unwrap().unwrap();
        c.name = "bench".into();
        db.init_cluster("default", &c, "secrets", 1).await.unwrap();
        let mac: Mac = "52:54:00:00:00:01".parse().unwrap();
        db.decide_bootstrap("bench", 1, mac, Ipv4Addr::LOCALHOST, 1)
            .await
            .unwrap();
        const N: u32 = 300;
        let started = std::time::Instant::now();
        for i in 0..N {
            let mut tx = db.write_tx().await.unwrap();
            sqlx::query("UPDATE bootstraps SET called_at = ? WHERE generation = 1")
                .bind(i64::from(i))
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
        let normal = started.elapsed() / N;
        let started = std::time::Instant::now();
        for i in 0..N {
            db.bootstrap_calling("bench", 1, i64::from(i))
                .await
                .unwrap();
        }
        let full = started.elapsed() / N;
        println!("commit of the bootstrap call mark: synchronous=NORMAL {normal:?}, durable (FULL) {full:?}");
    }
    use crate::model::Role;

    fn mac(s: &str) -> Mac {
        s.parse().unwrap()
    }

    async fn fresh() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).await.unwrap();
        (dir, db)
    }

    #[tokio::test]
    async fn a_batch_of_observations_reads_as_if_applied_one_by_one() {
        let (_dir, db) = fresh().await;
        let (a, b) = (mac("52:54:00:00:00:0a"), mac("52:54:00:00:00:0b"));
        let obs = |m: Mac, at: i64, kind: EventKind, arch: Option<u16>, serial: Option<&str>| {
            Observation {
                mac: m,
                at,
                kind,
                detail: format!("at {at}"),
                arch,
                smbios_uuid: None,
                serial: serial.map(String::from),
            }
        };
        db.record(&[obs(a, 10, EventKind::DhcpOffer, Some(0), None)])
            .await
            .unwrap();
        let batch: Vec<Observation> = (0..250)
            .map(|i| match i % 3 {
                0 => obs(a, 20 + i, EventKind::DhcpAck, Some(7), None),
                1 => obs(b, 20 + i, EventKind::ProxyOffer, None, Some("s1")),
                _ => obs(b, 20 + i, EventKind::ScriptServed, Some(7), None),
            })
            .collect();
        db.record(&batch).await.unwrap();
        let ma = db.get_machine(a).await.unwrap().unwrap();
        assert_eq!(
            (ma.first_seen, ma.last_seen, ma.last_arch),
            (Some(10), Some(269), Some(7))
        );
        let mb = db.get_machine(b).await.unwrap().unwrap();
        assert_eq!((mb.first_seen, mb.last_seen), (Some(21), Some(268)));
        assert_eq!((mb.last_arch, mb.serial.as_deref()), (Some(7), Some("s1")));
        let ea = db.events(a, 1000).await.unwrap();
        assert_eq!(ea.len(), 1 + 1 + 84);
        assert_eq!(ea[0].kind, EventKind::Discovered);
        assert!(ea[1..].iter().all(|e| e.kind != EventKind::Discovered));
        let eb = db.events(b, 1000).await.unwrap();
        assert_eq!(eb.len(), 1 + 166);
        assert_eq!((eb[0].kind, eb[0].at), (EventKind::Discovered, 21));
        assert_eq!(
            (eb[1].kind, eb[1].detail.as_str()),
            (EventKind::ProxyOffer, "at 21")
        );
        assert_eq!(eb.last().unwrap().detail, "at 268");
    }

    fn assigned(m: &str, host: &str, ip: &str) -> Machine {
        let mut machine = Machine::discovered(mac(m));
        machine.role = Role::Controlplane;
        machine.hostname = Some(host.into());
        machine.ip = Some(ip.parse().unwrap());
        machine.dns = vec![Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(9, 9, 9, 9)];
        machine
    }

    #[tokio::test]
    async fn machine_round_trips_through_sqlite() {
        let (_dir, db) = fresh().await;
        let mut m = assigned("52:54:00:00:00:01", "cp-1", "10.0.0.11/24");
        m.talos_version = Some("v1.10.9".into());
        db.add_machine(&m, 5).await.unwrap();
        let got = db.get_machine(m.mac).await.unwrap().unwrap();
        let expected = Machine {
            state: Lifecycle::Assigned,
            state_since: Some(5),
            ..m.clone()
        };
        assert_eq!(got, expected);
        assert!(matches!(
            db.add_machine(&m, 6).await,
            Err(DbError::Exists(_))
        ));
    }

    #[tokio::test]
    async fn duplicate_hostname_and_ip_are_refused_with_the_owner() {
        let (_dir, db) = fresh().await;
        db.add_machine(&assigned("52:54:00:00:00:01", "cp-1", "10.0.0.11/24"), 1)
            .await
            .unwrap();
        let err = db
            .add_machine(&assigned("52:54:00:00:00:02", "cp-1", "10.0.0.12/24"), 1)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "hostname cp-1 is already used by 52:54:00:00:00:01"
        );
        let err = db
            .add_machine(&assigned("52:54:00:00:00:02", "cp-2", "10.0.0.11/24"), 1)
            .await
            .unwrap_err();
        assert!(matches!(err, DbError::IpTaken { .. }), "{err}");
        assert_eq!(db.list_machines().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn observations_discover_unknown_machines_and_log_events() {
        let (_dir, db) = fresh().await;
        let m = mac("52:54:00:00:00:09");
        let obs = Observation {
            mac: m,
            at: 100,
            kind: EventKind::ProxyOffer,
            detail: "file undionly.kpxe".into(),
            arch: Some(7),
            smbios_uuid: Some("7e57ab1e-0000-4000-8000-000000000001".into()),
            serial: None,
        };
        db.record(&[obs.clone(), Observation { at: 200, ..obs }])
            .await
            .unwrap();
        let machine = db.get_machine(m).await.unwrap().unwrap();
        assert_eq!(machine.role, Role::Unassigned);
        assert_eq!(machine.first_seen, Some(100));
        assert_eq!(machine.last_seen, Some(200));
        assert_eq!(machine.last_arch, Some(7));
        let kinds: Vec<_> = db
            .events(m, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds,
            vec![
                EventKind::Discovered,
                EventKind::ProxyOffer,
                EventKind::ProxyOffer
            ]
        );
    }

    fn seen_at(m: Mac, at: i64) -> Observation {
        Observation {
            mac: m,
            at,
            kind: EventKind::ProxyOffer,
            detail: String::new(),
            arch: Some(7),
            smbios_uuid: None,
            serial: None,
        }
    }

    #[tokio::test]
    async fn unclaimed_machines_beyond_the_cap_go_oldest_seen_first_with_their_events() {
        let (_dir, db) = fresh().await;
        // Claimed: assigned, or written by an operator while unassigned. Never pruned.
        let worker = assigned("52:54:00:00:01:01", "w-1", "10.0.0.21/24");
        db.add_machine(&worker, 1).await.unwrap();
        let kept = Machine::discovered(mac("52:54:00:00:01:02"));
        db.add_machine(&kept, 1).await.unwrap();
        let strangers: Vec<Mac> = (1..=5)
            .map(|i| mac(&format!("02:00:00:00:00:0{i}")))
            .collect();
        for (i, m) in strangers.iter().enumerate() {
            db.record_capped(&[seen_at(*m, 10 + i as i64)], 3)
                .await
                .unwrap();
            if i == 2 {
                // The first discovered, seen again: it outlives later ones.
                db.record_capped(&[seen_at(strangers[0], 50)], 3)
                    .await
                    .unwrap();
            }
        }
        db.record_capped(&[seen_at(mac("02:00:00:00:00:06"), 101)], 3)
            .await
            .unwrap();
        let left: Vec<Mac> = db
            .list_machines()
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.mac)
            .collect();
        assert_eq!(left.len(), 2 + 3, "{left:?}");
        for m in [worker.mac, kept.mac, strangers[0], strangers[4]] {
            assert!(left.contains(&m), "{m} was pruned: {left:?}");
        }
        for m in &strangers[1..4] {
            assert!(!left.contains(m), "{m} was kept: {left:?}");
            assert!(
                db.events(*m, 10).await.unwrap().is_empty(),
                "{m}'s events kept"
            );
        }
        assert_eq!(db.events(strangers[0], 10).await.unwrap().len(), 3);
        assert_eq!(db.events(kept.mac, 10).await.unwrap().len(), 1);
        let assigned: Vec<Mac> = db
            .list_assigned_machines()
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.mac)
            .collect();
        assert_eq!(assigned, vec![worker.mac]);
    }

    #[tokio::test]
    async fn a_flood_of_new_macs_keeps_at_most_the_cap() {
        let (_dir, db) = fresh().await;
        let flood: Vec<Observation> = (0..DISCOVERED_CAP + 50)
            .map(|i| {
                let b = i.to_be_bytes();
                seen_at(Mac([2, 0, 0, b[5], b[6], b[7]]), i)
            })
            .collect();
        db.record(&flood[..600]).await.unwrap();
        db.record(&flood[600..]).await.unwrap();
        let machines = db.list_machines().await.unwrap();
        assert_eq!(machines.len() as i64, DISCOVERED_CAP);
        assert!(machines.iter().all(|m| m.last_seen >= Some(50)));
    }

    #[tokio::test]
    async fn leases_persist_and_steal_stale_addresses() {
        let (dir, db) = fresh().await;
        let a = LeaseRow {
            mac: mac("52:54:00:00:00:01"),
            ip: Ipv4Addr::new(10, 0, 0, 100),
            expires_at: 10,
            hostname: None,
        };
        let b = LeaseRow {
            mac: mac("52:54:00:00:00:02"),
            ..a.clone()
        };
        db.save_leases(&[(a.mac, Some(a.clone()))]).await.unwrap();
        db.save_leases(&[(b.mac, Some(b.clone()))]).await.unwrap();
        db.close().await;
        let db = Db::open(dir.path()).await.unwrap();
        assert_eq!(db.load_leases().await.unwrap(), vec![b.clone()]);
        db.save_leases(&[(b.mac, None)]).await.unwrap();
        assert!(db.load_leases().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn remove_keeps_history() {
        let (_dir, db) = fresh().await;
        let m = assigned("52:54:00:00:00:01", "cp-1", "10.0.0.11/24");
        db.add_machine(&m, 1).await.unwrap();
        db.remove_machine(m.mac, 2).await.unwrap();
        assert!(db.get_machine(m.mac).await.unwrap().is_none());
        // added, state discovered -> assigned, removed
        assert_eq!(db.events(m.mac, 10).await.unwrap().len(), 3);
        assert!(matches!(
            db.remove_machine(m.mac, 3).await,
            Err(DbError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn database_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, _db) = fresh().await;
        let mode = std::fs::metadata(dir.path().join(DB_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    fn cluster(name: &str) -> Cluster {
        Cluster {
            name: name.into(),
            endpoint: Some("https://10.0.0.5:6443".into()),
            vip: Some(Ipv4Addr::new(10, 0, 0, 5)),
            talos_version: Some("v1.11.6".into()),
            kubernetes_version: None,
            install_image: None,
            pod_subnets: vec!["10.244.0.0/16".into()],
            service_subnets: vec!["10.96.0.0/12".into()],
            dns_domain: "cluster.local".into(),
            node_subnets: NodeSubnets::Auto,
            nameservers: vec![],
            initialised_at: None,
            generation: 1,
            single_controlplane: false,
            bootstrapped_at: None,
        }
    }

    #[tokio::test]
    async fn cluster_init_renames_once_and_keeps_secrets_apart() {
        let (_dir, db) = fresh().await;
        let before = db.get_cluster(None).await.unwrap().unwrap();
        assert_eq!(before.name, "default");
        assert!(before.initialised_at.is_none());
        db.init_cluster("default", &cluster("homelab"), "secrets: x", 7)
            .await
            .unwrap();
        let after = db.get_cluster(Some("homelab")).await.unwrap().unwrap();
        assert_eq!(after.initialised_at, Some(7));
        assert_eq!(after.vip, Some(Ipv4Addr::new(10, 0, 0, 5)));
        assert_eq!(
            db.cluster_secrets("homelab").await.unwrap().as_deref(),
            Some("secrets: x")
        );
        let again = db
            .init_cluster("homelab", &cluster("homelab"), "other", 8)
            .await
            .unwrap_err();
        assert!(matches!(again, DbError::ClusterInitialised(_)), "{again}");
        assert_eq!(
            db.cluster_secrets("homelab").await.unwrap().as_deref(),
            Some("secrets: x")
        );
        // Machines follow the rename: they reference the cluster by id.
        let mut m = Machine::discovered(mac("52:54:00:00:00:01"));
        m.cluster = "homelab".into();
        db.add_machine(&m, 9).await.unwrap();
        assert_eq!(
            db.get_machine(m.mac).await.unwrap().unwrap().cluster,
            "homelab"
        );
    }

    #[tokio::test]
    async fn node_subnets_nameservers_and_report_targets_round_trip() {
        let (_dir, db) = fresh().await;
        let fresh_cluster = db.get_cluster(None).await.unwrap().unwrap();
        assert_eq!(fresh_cluster.node_subnets, NodeSubnets::Auto);
        assert!(fresh_cluster.nameservers.is_empty());
        for subnets in [
            NodeSubnets::Off,
            NodeSubnets::Given(vec!["10.0.0.0/24".into(), "fd00::/64".into()]),
            NodeSubnets::Auto,
        ] {
            let mut c = cluster("default");
            c.node_subnets = subnets.clone();
            c.nameservers = vec![Ipv4Addr::new(10, 0, 0, 53), Ipv4Addr::new(10, 0, 0, 54)];
            db.update_cluster("default", &c).await.unwrap();
            let back = db.get_cluster(None).await.unwrap().unwrap();
            assert_eq!(
                (back.node_subnets, back.nameservers),
                (subnets, c.nameservers)
            );
        }
        assert_eq!(db.report_targets().await.unwrap(), ReportTargets::default());
        let targets = ReportTargets {
            events_endpoint: Some("10.0.0.1:4002".into()),
            kernel_log_url: None,
        };
        assert_eq!(db.lan_facts().await.unwrap(), None);
        let lan = LanFacts {
            subnet: "10.0.0.1/24".parse().unwrap(),
            pool: Some((Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 199))),
            own: vec![Ipv4Addr::new(10, 0, 0, 1)],
        };
        db.set_appliance_facts(&targets, &lan, 5).await.unwrap();
        assert_eq!(db.report_targets().await.unwrap(), targets);
        assert_eq!(db.lan_facts().await.unwrap(), Some(lan));
    }

    #[tokio::test]
    async fn patches_keep_scope_order_and_replace_by_name() {
        let (_dir, db) = fresh().await;
        let p = |scope: PatchScope, mac: Option<Mac>, name: &str, body: &str| PatchRecord {
            scope,
            mac,
            position: 0,
            name: name.into(),
            body: body.into(),
        };
        let m = mac("52:54:00:00:00:01");
        db.put_patch("default", &p(PatchScope::Machine, Some(m), "disk", "a"), 1)
            .await
            .unwrap();
        db.put_patch("default", &p(PatchScope::Worker, None, "w", "b"), 1)
            .await
            .unwrap();
        db.put_patch("default", &p(PatchScope::Cluster, None, "c2", "c"), 1)
            .await
            .unwrap();
        db.put_patch("default", &p(PatchScope::Cluster, None, "c1", "d"), 1)
            .await
            .unwrap();
        db.put_patch("default", &p(PatchScope::Cluster, None, "c2", "e"), 2)
            .await
            .unwrap();
        let got: Vec<(String, String)> = db
            .list_patches("default")
            .await
            .unwrap()
            .into_iter()
            .map(|p| (p.name, p.body))
            .collect();
        let want = [("c2", "e"), ("c1", "d"), ("w", "b"), ("disk", "a")];
        assert_eq!(
            got,
            want.map(|(a, b)| (a.to_string(), b.to_string())).to_vec()
        );
        db.remove_patch("default", PatchScope::Cluster, None, "c1")
            .await
            .unwrap();
        assert!(db
            .remove_patch("default", PatchScope::Cluster, None, "c1")
            .await
            .is_err());
    }

    #[tokio::test]
    async fn the_first_bootstrap_decision_of_a_generation_sticks() {
        let (_dir, db) = fresh().await;
        let a = mac("52:54:00:00:00:01");
        let b = mac("52:54:00:00:00:02");
        let first = db
            .decide_bootstrap("default", 1, a, Ipv4Addr::new(10, 0, 0, 11), 5)
            .await
            .unwrap();
        let second = db
            .decide_bootstrap("default", 1, b, Ipv4Addr::new(10, 0, 0, 12), 6)
            .await
            .unwrap();
        assert_eq!(first, second);
        assert_eq!(second.target_mac, a);
        db.bootstrap_calling("default", 1, 7).await.unwrap();
        let marked = db.get_bootstrap("default", 1).await.unwrap().unwrap();
        assert_eq!((marked.called_at, marked.calls), (Some(7), 1));
        db.finish_bootstrap("default", 1, BootstrapResult::Bootstrapped, "ok", 8)
            .await
            .unwrap();
        // A finished generation is not marked again.
        db.bootstrap_calling("default", 1, 9).await.unwrap();
        let done = db.get_bootstrap("default", 1).await.unwrap().unwrap();
        assert_eq!(
            (done.calls, done.outcome.map(|o| o.as_str())),
            (1, Some("bootstrapped"))
        );
        assert!(db.new_generation("default", 1).await.unwrap());
        assert!(
            !db.new_generation("default", 1).await.unwrap(),
            "stale generation"
        );
        let c = db.get_cluster(None).await.unwrap().unwrap();
        assert_eq!((c.generation, c.bootstrapped_at), (2, None));
        assert!(db.get_bootstrap("default", 2).await.unwrap().is_none());
    }

    #[test]
    fn operator_edits_move_the_lifecycle() {
        let state_after_edit = |old: Lifecycle, m: &Machine| {
            transition(old, m.installed, Step::Edited { role: m.role }).unwrap()
        };
        let mut m = Machine::discovered(mac("52:54:00:00:00:01"));
        assert_eq!(
            state_after_edit(Lifecycle::Discovered, &m),
            Lifecycle::Discovered
        );
        m.role = Role::Worker;
        assert_eq!(
            state_after_edit(Lifecycle::Discovered, &m),
            Lifecycle::Assigned
        );
        assert_eq!(state_after_edit(Lifecycle::Booting, &m), Lifecycle::Booting);
        assert_eq!(state_after_edit(Lifecycle::Ready, &m), Lifecycle::Assigned);
        m.installed = true;
        assert_eq!(state_after_edit(Lifecycle::Ready, &m), Lifecycle::Ready);
        assert_eq!(
            state_after_edit(Lifecycle::Booting, &m),
            Lifecycle::Installed
        );
        m.role = Role::Unassigned;
        assert_eq!(
            state_after_edit(Lifecycle::Ready, &m),
            Lifecycle::Discovered
        );
    }

    /// A small tmpfs mounted over a fresh directory; unmounted on drop, so a failing test
    /// leaves no mount behind.
    struct SmallFs(tempfile::TempDir);

    impl SmallFs {
        fn mount(size: &str) -> SmallFs {
            let dir = tempfile::tempdir().unwrap();
            let status = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
                .arg("tmpfs")
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(
                status.success(),
                "BOOTPLANE_E2E=1 needs root (mount -t tmpfs)"
            );
            SmallFs(dir)
        }

        fn path(&self) -> &Path {
            self.0.path()
        }
    }

    impl Drop for SmallFs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.0.path())
                .status();
        }
    }

    /// Writes a file until the filesystem refuses with ENOSPC.
    fn fill(file: &Path) {
        use std::io::Write;
        let mut f = std::fs::File::create(file).unwrap();
        let chunk = vec![0xa5u8; 64 * 1024];
        loop {
            if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_all()) {
                assert_eq!(e.raw_os_error(), Some(nix::libc::ENOSPC), "{e}");
                return;
            }
        }
    }

    /// One disk-full episode used to leave a pooled connection inside a transaction (SQLite
    /// rolled it back itself, sqlx's ROLLBACK then failed), and every later write on it failed
    /// with "attempted to call begin_with at non-zero transaction depth" until a restart.
    #[tokio::test]
    async fn writes_succeed_again_once_a_full_disk_has_space() {
        if std::env::var("BOOTPLANE_E2E").as_deref() != Ok("1") {
            println!("skipped: set BOOTPLANE_E2E=1 (mounts a small tmpfs, so root)");
            return;
        }
        let fs = SmallFs::mount("12m");
        let data = fs.path().join("data");
        let db = Db::open(&data).await.unwrap();
        let seen = |m: Mac, at: i64, detail: String| Observation {
            mac: m,
            at,
            kind: EventKind::ProxyOffer,
            detail,
            arch: Some(7),
            smbios_uuid: None,
            serial: None,
        };
        let before = mac("52:54:00:00:00:01");
        db.record(&[seen(before, 1, "before".into())])
            .await
            .unwrap();
        let user = db.put_user("admin", "$argon2id$test", 1).await.unwrap();

        let filler = fs.path().join("filler");
        fill(&filler);
        // Far more than any WAL space left over from earlier writes: this write must fail.
        let lost = mac("52:54:00:00:00:02");
        let big: Vec<Observation> = (0..64)
            .map(|i| seen(lost, 10 + i, "x".repeat(64 * 1024)))
            .collect();
        let err = db.record(&big).await.unwrap_err();
        assert!(err.to_string().contains("full"), "{err}");
        // More failures while the disk is full, through every pooled connection.
        for i in 0..8 {
            assert!(
                db.record(&big[..8]).await.is_err(),
                "write {i} on a full disk"
            );
        }

        std::fs::remove_file(&filler).unwrap();
        // Every connection of the pool is used again; none may still think it is inside a
        // transaction.
        let after = mac("52:54:00:00:00:03");
        for i in 0..16 {
            db.record(&[seen(after, 100 + i, format!("after {i}"))])
                .await
                .unwrap();
        }
        let batches: Vec<[Observation; 1]> = (0..8)
            .map(|i| [seen(after, 200 + i, "concurrent".into())])
            .collect();
        let writes = batches.iter().map(|batch| db.record(batch));
        for result in futures::future::join_all(writes).await {
            result.unwrap();
        }
        let digest = "d".repeat(64);
        db.create_session(&digest, user, "csrf", 300, 400)
            .await
            .unwrap();
        assert_eq!(
            db.session(&digest, 301).await.unwrap().unwrap().user_id,
            user
        );

        // Nothing stored before the episode was lost, nothing of the failed writes was kept.
        let kinds: Vec<_> = db.events(before, 10).await.unwrap();
        assert_eq!(kinds.len(), 2, "{kinds:?}");
        assert_eq!(kinds[1].detail, "before");
        assert!(db.get_machine(lost).await.unwrap().is_none());
        assert_eq!(db.events(after, 100).await.unwrap().len(), 1 + 16 + 8);
        db.close().await;
        let db = Db::open(&data).await.unwrap();
        assert_eq!(db.list_machines().await.unwrap().len(), 2);
        assert!(db.user_by_name("admin").await.unwrap().is_some());
        db.close().await;
    }
}
