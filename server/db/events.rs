//! What was seen on the network and what bootplane did: discovery from sightings, the
//! append-only event log, and the cap on machines nobody claimed.

use sqlx::Row;

use crate::model::{Event, EventKind, Mac};

use super::{parse_col, Db, DbError};

/// How many never-assigned discovered machines are kept (the newest seen); older ones are
/// pruned with their events. Anyone on the LAN can invent MACs, so this bounds what strangers
/// can make bootplane store and load into its inventory.
pub const DISCOVERED_CAP: i64 = 1000;

/// Machines nobody ever claimed: unassigned, still `discovered`, and never written by an
/// operator (every operator write logs a `changed` event). Only these are pruned by the cap.
const UNCLAIMED: &str = "SELECT m.mac FROM machines m
    WHERE m.role = 'unassigned' AND m.state = 'discovered'
      AND NOT EXISTS (SELECT 1 FROM events e WHERE e.mac = m.mac AND e.kind = 'changed')";

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

impl Db {
    /// Applies a batch of observations in one transaction: unknown MACs become discovered
    /// machines, known ones get their last-seen facts refreshed, every observation is logged.
    /// Beyond [`DISCOVERED_CAP`] unclaimed machines, the ones seen longest ago go, with their
    /// events.
    pub async fn record(&self, batch: &[Observation]) -> Result<(), DbError> {
        self.record_capped(batch, DISCOVERED_CAP).await
    }

    pub(super) async fn record_capped(
        &self,
        batch: &[Observation],
        cap: i64,
    ) -> Result<(), DbError> {
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
        // A few multi-row statements per chunk instead of three statements per sighting: each
        // statement is a round trip to SQLite's worker thread.
        for chunk in batch.chunks(ROWS_PER_STATEMENT) {
            let macs: Vec<String> = chunk.iter().map(|o| o.mac.to_string()).collect();
            // 1. Which of these machines are new.
            let sql = format!(
                "SELECT mac FROM machines WHERE mac IN ({})",
                vec!["?"; macs.len()].join(", ")
            );
            let mut known = sqlx::query(&sql);
            for mac in &macs {
                known = known.bind(mac);
            }
            let known: std::collections::HashSet<String> = known
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| row.try_get::<String, _>(0))
                .collect::<Result<_, _>>()?;
            let new: std::collections::HashSet<&str> = macs
                .iter()
                .map(String::as_str)
                .filter(|mac| !known.contains(*mac))
                .collect();
            // 2. Unknown MACs become discovered machines; every sighting, in order, refreshes
            //    its machine's last-seen facts.
            let sql = format!(
                "INSERT INTO machines (mac, cluster_id, first_seen, last_seen, state_since,
                                       last_arch, smbios_uuid, serial)
                 VALUES {} ON CONFLICT (mac) DO UPDATE SET
                    first_seen = COALESCE(first_seen, excluded.first_seen),
                    last_seen = MAX(COALESCE(last_seen, 0), excluded.last_seen),
                    last_arch = COALESCE(excluded.last_arch, last_arch),
                    smbios_uuid = COALESCE(excluded.smbios_uuid, smbios_uuid),
                    serial = COALESCE(excluded.serial, serial)",
                values(chunk.len(), 8)
            );
            let mut upsert = sqlx::query(&sql);
            for (obs, mac) in chunk.iter().zip(&macs) {
                upsert = upsert
                    .bind(mac)
                    .bind(default_cluster)
                    .bind(obs.at)
                    .bind(obs.at)
                    .bind(obs.at)
                    .bind(obs.arch.map(i64::from))
                    .bind(&obs.smbios_uuid)
                    .bind(&obs.serial);
            }
            upsert.execute(&mut *tx).await?;
            // 3. The event log: a new machine's `discovered` before its first sighting.
            let mut rows: Vec<(&str, i64, EventKind, &str)> = Vec::with_capacity(chunk.len() * 2);
            let mut announced = std::collections::HashSet::new();
            for (obs, mac) in chunk.iter().zip(&macs) {
                if new.contains(mac.as_str()) && announced.insert(mac.as_str()) {
                    rows.push((mac, obs.at, EventKind::Discovered, ""));
                }
                rows.push((mac, obs.at, obs.kind, &obs.detail));
            }
            discovered |= !new.is_empty();
            insert_events(&mut tx, &rows).await?;
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
}

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

/// Sightings per multi-row statement: 8 columns each, far under SQLite's 32,766 parameters.
const ROWS_PER_STATEMENT: usize = 200;

/// `(?, ?, …), (?, ?, …), …`: `rows` groups of `columns` placeholders.
fn values(rows: usize, columns: usize) -> String {
    let group = format!("({})", vec!["?"; columns].join(", "));
    vec![group; rows].join(", ")
}

pub(super) async fn insert_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    mac: Mac,
    at: i64,
    kind: EventKind,
    detail: &str,
) -> Result<(), DbError> {
    insert_events(tx, &[(&mac.to_string(), at, kind, detail)]).await
}

/// The event log's one insert: `(mac, at, kind, detail)` rows in order, in one statement.
async fn insert_events(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    rows: &[(&str, i64, EventKind, &str)],
) -> Result<(), DbError> {
    if rows.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO events (mac, at, kind, detail) VALUES {}",
        values(rows.len(), 4)
    );
    let mut insert = sqlx::query(&sql);
    for (mac, at, kind, detail) in rows {
        insert = insert
            .bind(*mac)
            .bind(*at)
            .bind(kind.as_str())
            .bind(*detail);
    }
    insert.execute(&mut **tx).await?;
    Ok(())
}
