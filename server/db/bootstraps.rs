//! Bootstrap decisions and outcomes per cluster generation, written durably: a second
//! Bootstrap call depends on them.

use std::net::Ipv4Addr;

use sqlx::{Connection, Row};

use crate::model::{BootstrapRecord, BootstrapResult, Mac};

use super::{cluster_id, parse_col, Db, DbError};

impl Db {
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
