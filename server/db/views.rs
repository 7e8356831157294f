//! Read-only queries for the operators' pages.

use std::collections::HashMap;

use sqlx::Row;

use super::{parse_col, Db, DbError};
use crate::model::{Event, EventKind, Mac};

impl Db {
    /// The newest event of every machine that has one.
    pub async fn latest_events(&self) -> Result<HashMap<Mac, Event>, DbError> {
        let rows = sqlx::query(
            "SELECT e.mac, e.at, e.kind, e.detail FROM events e
             JOIN (SELECT mac, max(id) AS id FROM events GROUP BY mac) newest ON newest.id = e.id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = HashMap::with_capacity(rows.len());
        for row in &rows {
            let mac: String = row.try_get("mac")?;
            let kind: String = row.try_get("kind")?;
            let mac: Mac = match mac.parse() {
                Ok(m) => m,
                Err(_) => continue,
            };
            out.insert(
                mac,
                Event {
                    mac,
                    at: row.try_get("at")?,
                    kind: parse_col(&kind, "event kind")?,
                    detail: row.try_get("detail")?,
                },
            );
        }
        Ok(out)
    }

    /// When the machine last had an event of this kind.
    pub async fn last_event_at(&self, mac: Mac, kind: EventKind) -> Result<Option<i64>, DbError> {
        let row = sqlx::query("SELECT max(at) FROM events WHERE mac = ? AND kind = ?")
            .bind(mac.to_string())
            .bind(kind.as_str())
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }
}
