//! Read-only queries for the operators' pages.

use std::collections::HashMap;

use sqlx::Row;

use super::{parse_col, Db, DbError};
use crate::model::{Event, EventKind, Mac};

impl Db {
    /// The newest event of every machine in the inventory that has one. One index probe per
    /// machine (`events_by_mac`), not a scan of the whole log: the UI polls this every 2 s.
    pub async fn latest_events(&self) -> Result<HashMap<Mac, Event>, DbError> {
        let rows = sqlx::query(
            "SELECT e.mac, e.at, e.kind, e.detail FROM machines m
             JOIN events e ON e.id = (SELECT max(id) FROM events WHERE mac = m.mac)",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Observation;

    fn seen(mac: Mac, at: i64, kind: EventKind, detail: &str) -> Observation {
        Observation {
            mac,
            at,
            kind,
            detail: detail.into(),
            arch: None,
            smbios_uuid: None,
            serial: None,
        }
    }

    #[tokio::test]
    async fn latest_events_are_the_newest_per_machine_and_skip_removed_machines() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).await.unwrap();
        let a: Mac = "52:54:00:00:00:0a".parse().unwrap();
        let b: Mac = "52:54:00:00:00:0b".parse().unwrap();
        let gone: Mac = "52:54:00:00:00:0c".parse().unwrap();
        db.record(&[
            seen(a, 10, EventKind::ProxyOffer, "a first"),
            seen(b, 11, EventKind::ProxyOffer, "b first"),
            seen(gone, 12, EventKind::ProxyOffer, "gone first"),
        ])
        .await
        .unwrap();
        // Later events carry an older timestamp on purpose: "newest" is the last logged.
        db.record(&[
            seen(a, 5, EventKind::TftpServed, "a second"),
            seen(a, 6, EventKind::ScriptServed, "a third"),
        ])
        .await
        .unwrap();
        db.remove_machine(gone, 20).await.unwrap();

        let latest = db.latest_events().await.unwrap();
        assert_eq!(latest.len(), 2, "{latest:?}");
        assert_eq!(latest[&a].detail, "a third");
        assert_eq!(latest[&a].kind, EventKind::ScriptServed);
        assert_eq!(latest[&b].detail, "b first");
        assert!(!latest.contains_key(&gone));
    }
}
