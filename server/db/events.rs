//! What was seen on the network and what bootplane did: discovery from sightings, the
//! append-only event log, and the cap on machines nobody claimed.

use std::collections::{HashMap, HashSet};

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
        let macs: Vec<String> = batch.iter().map(|o| o.mac.to_string()).collect();
        // 1. Which of these machines are new, and which of the new ones the cap would prune
        //    at once: those are neither stored nor logged.
        let new = new_macs(&mut tx, &macs).await?;
        let claimed = claimed_before(&mut tx, &new).await?;
        let pruned_at_once = outranked(batch, &macs, &new, &claimed, cap);
        let kept: Vec<(&Observation, &String)> = batch
            .iter()
            .zip(&macs)
            .filter(|(_, mac)| !pruned_at_once.contains(mac.as_str()))
            .collect();
        let discovered = !new.is_empty();
        // A few multi-row statements per chunk instead of two statements per sighting: each
        // statement is a round trip to SQLite's worker thread.
        let mut announced = HashSet::new();
        for chunk in kept.chunks(ROWS_PER_STATEMENT) {
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
            for (obs, mac) in chunk {
                upsert = upsert
                    .bind(mac.as_str())
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
            for (obs, mac) in chunk {
                if new.contains(mac.as_str()) && announced.insert(mac.as_str()) {
                    rows.push((mac, obs.at, EventKind::Discovered, ""));
                }
                rows.push((mac, obs.at, obs.kind, &obs.detail));
            }
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
/// Runs after every batch that discovered a machine, so under a flood of invented MACs it must
/// stay cheap: a count bounds the work first, and the machines to drop are chosen once (one
/// sort), then deleted by MAC from each table.
pub(super) async fn prune_unclaimed(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    cap: i64,
) -> Result<(), DbError> {
    // Every unclaimed machine is unassigned and discovered: at most `cap` of those, none to prune.
    let candidates: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM machines WHERE role = 'unassigned' AND state = 'discovered'",
    )
    .fetch_one(&mut **tx)
    .await?;
    if candidates <= cap {
        return Ok(());
    }
    let doomed: Vec<String> = sqlx::query_scalar(&format!(
        "{UNCLAIMED} ORDER BY m.last_seen DESC, m.first_seen DESC, m.mac LIMIT -1 OFFSET ?"
    ))
    .bind(cap)
    .fetch_all(&mut **tx)
    .await?;
    for chunk in doomed.chunks(MACS_PER_STATEMENT) {
        let list = values(1, chunk.len());
        for table in ["events", "boot_log", "machines"] {
            let sql = format!("DELETE FROM {table} WHERE mac IN {list}");
            let mut delete = sqlx::query(&sql);
            for mac in chunk {
                delete = delete.bind(mac);
            }
            delete.execute(&mut **tx).await?;
        }
    }
    Ok(())
}

/// The MACs among `macs` that no machine has yet.
async fn new_macs<'m>(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    macs: &'m [String],
) -> Result<HashSet<&'m str>, DbError> {
    let all: HashSet<&str> = macs.iter().map(String::as_str).collect();
    let known = among(tx, "SELECT mac FROM machines WHERE mac IN", &all).await?;
    Ok(all.difference(&known).copied().collect())
}

/// The MACs among `new` that an operator touched before (a machine removed from the inventory
/// keeps its events, its `changed` ones among them): stored again, they are claimed, never
/// pruned, so they are never skipped either.
async fn claimed_before<'m>(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    new: &HashSet<&'m str>,
) -> Result<HashSet<&'m str>, DbError> {
    let query = "SELECT DISTINCT mac FROM events WHERE kind = 'changed' AND mac IN";
    among(tx, query, new).await
}

/// The MACs of `macs` that `query` (a statement ending in `mac IN`, completed here with a
/// list of placeholders) returns, asked a chunk at a time.
async fn among<'m>(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    query: &str,
    macs: &HashSet<&'m str>,
) -> Result<HashSet<&'m str>, DbError> {
    let mut found = HashSet::new();
    let listed: Vec<&str> = macs.iter().copied().collect();
    for chunk in listed.chunks(MACS_PER_STATEMENT) {
        let sql = format!("{query} {}", values(1, chunk.len()));
        let mut select = sqlx::query_scalar::<_, String>(&sql);
        for mac in chunk {
            select = select.bind(*mac);
        }
        for mac in select.fetch_all(&mut **tx).await? {
            if let Some(m) = macs.get(mac.as_str()) {
                found.insert(*m);
            }
        }
    }
    Ok(found)
}

/// The new MACs of a batch that [`prune_unclaimed`] would delete as soon as they were stored:
/// of the new MACs nobody claimed before, all but the `cap` that rank first by its order (seen
/// last, first seen last, MAC). Each of those is outranked by `cap` machines that are new and
/// unclaimed, whatever the table held, so skipping it stores the machines and new events that
/// storing and pruning would leave. A flood of invented MACs thus costs at most `cap` inserts
/// a batch, not one per MAC.
fn outranked<'m>(
    batch: &[Observation],
    macs: &'m [String],
    new: &HashSet<&'m str>,
    claimed: &HashSet<&'m str>,
    cap: i64,
) -> HashSet<&'m str> {
    let keep = usize::try_from(cap.max(0)).unwrap_or(usize::MAX);
    let unclaimed = new.len().saturating_sub(claimed.len());
    if unclaimed <= keep {
        return HashSet::new();
    }
    // Per unclaimed new MAC: (last seen, first seen) as the upsert would store them.
    let mut seen: HashMap<&str, (i64, i64)> = HashMap::with_capacity(unclaimed);
    for (obs, mac) in batch.iter().zip(macs) {
        let mac = mac.as_str();
        if new.contains(mac) && !claimed.contains(mac) {
            seen.entry(mac)
                .and_modify(|(last, _)| *last = (*last).max(obs.at))
                .or_insert((obs.at, obs.at));
        }
    }
    let mut ranked: Vec<(&str, (i64, i64))> = seen.into_iter().collect();
    ranked.sort_unstable_by(|(a, (a_last, a_first)), (b, (b_last, b_first))| {
        b_last.cmp(a_last).then(b_first.cmp(a_first)).then(a.cmp(b))
    });
    ranked.into_iter().skip(keep).map(|(mac, _)| mac).collect()
}

/// MACs per lookup or pruning `DELETE`: far under SQLite's 32,766 parameters.
const MACS_PER_STATEMENT: usize = 1000;

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
