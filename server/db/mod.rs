//! The only module that speaks SQL. Rows become domain types at this edge.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Row, SqlitePool};

use crate::model::lifecycle::Forbidden;
use crate::model::Mac;

mod assets;
mod auth;
mod boot_log;
mod bootstraps;
mod clusters;
mod events;
mod leases;
mod machines;
mod patches;
#[cfg(test)]
mod tests;
mod views;

pub use auth::{SessionRow, TokenRow, UserRow};
pub use events::{Observation, DISCOVERED_CAP};
pub use leases::LeaseRow;

pub const DB_FILE: &str = "bootplane.db";

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

#[derive(Clone, Debug)]
pub struct Db {
    pool: SqlitePool,
    /// One connection for every write transaction ([`Db::write_tx`]): writers queue for it in
    /// turn, first come first served, instead of retrying SQLite's lock in its busy handler,
    /// where a writer committing back to back (the event writer under a DHCP storm) could keep
    /// another (the lease flush) waiting for seconds.
    writer: SqlitePool,
    /// What [`Db::change_versions`] last read of `materials_version`, and how often it has
    /// seen it move: shared by every clone, so in-memory copies of materials (asset records,
    /// boot scripts) can tell they predate another process's write.
    materials: Arc<MaterialsSeen>,
}

#[derive(Debug, Default)]
struct MaterialsSeen {
    version: std::sync::atomic::AtomicI64,
    moves: std::sync::atomic::AtomicU64,
}

/// The settings of both pools: at most `max` connections, each checked when it comes back.
fn pool_options(max: u32) -> SqlitePoolOptions {
    SqlitePoolOptions::new()
        .max_connections(max)
        // SQLite is a file in this process: a connection does not go stale the way a network
        // one does, and testing it costs a round trip to its worker thread per query.
        .test_before_acquire(false)
        // A connection must come back out of every transaction. When the disk fills, SQLite
        // rolls a transaction back itself and sqlx's own ROLLBACK then fails, so sqlx still
        // counts the connection as inside one and refuses every later `BEGIN` on it (the
        // pool would keep it for ever). Such a connection is closed (SQLite rolls back
        // whatever is open) and the pool opens a fresh one when it needs it.
        .after_release(|conn, _meta| {
            Box::pin(async move {
                // The worker keeps the depth: zero means every transaction on this connection
                // ended. Otherwise a dropped transaction's rollback may still be queued: the
                // ping is ordered after it.
                if !conn.is_in_transaction() {
                    return Ok(true);
                }
                conn.ping().await?;
                let clean = !conn.is_in_transaction();
                if !clean {
                    tracing::warn!("closing a database connection left inside a transaction");
                }
                Ok(clean)
            })
        })
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
        let pool = pool_options(4).connect_with(options.clone()).await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        let writer = pool_options(1).connect_with(options).await?;
        Ok(Db {
            pool,
            writer,
            materials: Arc::default(),
        })
    }

    /// The counter triggers bump whenever a commit changes what `list_machines` returns, apart
    /// from the first/last-seen stamps (migration 0008); any process's commits count.
    pub async fn inventory_version(&self) -> Result<i64, DbError> {
        let row = sqlx::query("SELECT version FROM inventory_version WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>(0)?)
    }

    /// Both change counters in one read: `inventory_version` and `materials_version`. A
    /// materials version other than the last one read counts as a move
    /// ([`Db::materials_moves`]).
    pub async fn change_versions(&self) -> Result<(i64, i64), DbError> {
        use std::sync::atomic::Ordering;
        let row = sqlx::query(
            "SELECT (SELECT version FROM inventory_version WHERE id = 1),
                    (SELECT version FROM materials_version WHERE id = 1)",
        )
        .fetch_one(&self.pool)
        .await?;
        let versions = (row.try_get::<i64, _>(0)?, row.try_get::<i64, _>(1)?);
        if self.materials.version.swap(versions.1, Ordering::AcqRel) != versions.1 {
            self.materials.moves.fetch_add(1, Ordering::AcqRel);
        }
        Ok(versions)
    }

    /// How often [`Db::change_versions`] has seen `materials_version` move (the first read
    /// counts as one). Whatever was read from materials (clusters, patches, asset records,
    /// appliance facts) under an older count may predate a write, this process's or another's.
    pub fn materials_moves(&self) -> u64 {
        self.materials
            .moves
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// SQLite's own check of the file (`PRAGMA integrity_check`): "ok", or what is damaged.
    pub async fn integrity_check(&self) -> Result<String, DbError> {
        let rows = sqlx::query("PRAGMA integrity_check")
            .fetch_all(&self.pool)
            .await?;
        let lines: Result<Vec<String>, _> =
            rows.iter().map(|r| r.try_get::<String, _>(0)).collect();
        Ok(lines?.join("\n"))
    }

    /// The counter every change to a config's materials moves (clusters, patches, asset
    /// records, appliance facts; see migration 0013), in any process.
    pub async fn materials_version(&self) -> Result<i64, DbError> {
        let row = sqlx::query("SELECT version FROM materials_version WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>(0)?)
    }

    /// A write transaction that takes SQLite's write lock up front (`BEGIN IMMEDIATE`), so a
    /// concurrent writer makes it wait out the busy timeout instead of failing with
    /// "database is locked" when a deferred transaction tries to upgrade its read lock.
    /// It runs on the writer connection, so write transactions take turns in order.
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, DbError> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// A connection whose next commits are durable on power loss: `synchronous=FULL` syncs
    /// the WAL at each commit (the pool's `NORMAL` leaves the last commits to the next
    /// checkpoint). For the records a second Bootstrap depends on: the target of a generation,
    /// the call mark, the outcome, the generation counter; and for the DHCP leases an ACK
    /// announces. Give it back with [`Db::relax`].
    /// It is the writer connection, so these records wait their turn behind other writes
    /// instead of retrying SQLite's lock.
    async fn durable_conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Sqlite>, DbError> {
        let mut conn = self.writer.acquire().await?;
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

    pub async fn close(&self) {
        self.writer.close().await;
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

fn parse_col<T: FromStr>(text: &str, what: &str) -> Result<T, DbError>
where
    T::Err: std::fmt::Display,
{
    text.parse().map_err(|e: T::Err| DbError::Corrupt {
        what: what.to_string(),
        why: e.to_string(),
    })
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
