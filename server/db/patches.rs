//! Config patches of a cluster, in application order per scope.

use sqlx::Row;

use crate::model::{Mac, PatchRecord, PatchScope};

use super::{cluster_id, parse_col, Db, DbError};

impl Db {
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
}
