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
        let mut conn = self.durable_conn().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
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
        Self::relax(conn).await;
        Ok(())
    }
}
