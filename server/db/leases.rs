//! Leases handed out in full-DHCP mode.

use std::net::Ipv4Addr;

use sqlx::{Connection, Row};

use crate::model::Mac;

use super::{parse_col, Db, DbError};

/// A lease handed out in full-DHCP mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRow {
    pub mac: Mac,
    pub ip: Ipv4Addr,
    pub expires_at: i64,
    pub hostname: Option<String>,
}

impl Db {
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

    /// Writes lease changes in one transaction; `None` for a MAC deletes its lease. Committed
    /// durably ([`Db::durable_conn`]): the DHCP server sends an ACK only after the binding it
    /// announces is written here, and a power cut after that must not lose it.
    pub async fn save_leases(&self, changes: &[(Mac, Option<LeaseRow>)]) -> Result<(), DbError> {
        if changes.is_empty() {
            return Ok(());
        }
        // The whole batch travels as one JSON parameter, so a commit of hundreds of leases is
        // three statements on the database thread, not three per lease. The batch holds one
        // change per MAC and the bound addresses are unique (the lease table's invariant), so
        // deleting every row of a changed MAC or a newly bound address, then inserting the
        // bindings, leaves what the per-lease order would.
        let batch = serde_json::Value::Array(
            changes
                .iter()
                .map(|(mac, lease)| {
                    serde_json::json!({
                        "mac": mac.to_string(),
                        "ip": lease.as_ref().map(|l| l.ip.to_string()),
                        "expires_at": lease.as_ref().map(|l| l.expires_at),
                        "hostname": lease.as_ref().and_then(|l| l.hostname.clone()),
                    })
                })
                .collect(),
        )
        .to_string();
        let mut conn = self.durable_conn().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "DELETE FROM leases
             WHERE mac IN (SELECT value ->> 'mac' FROM json_each(?1))
                OR ip IN (SELECT value ->> 'ip' FROM json_each(?1) WHERE value ->> 'ip' IS NOT NULL)",
        )
        .bind(&batch)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO leases (mac, ip, expires_at, hostname)
             SELECT value ->> 'mac', value ->> 'ip', value ->> 'expires_at', value ->> 'hostname'
             FROM json_each(?1) WHERE value ->> 'ip' IS NOT NULL",
        )
        .bind(&batch)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Self::relax(conn).await;
        Ok(())
    }
}
