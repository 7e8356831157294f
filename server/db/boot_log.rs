//! The per-machine boot log: kernel messages nodes stream to bootplane, kept as a ring of the
//! newest lines per machine.

use sqlx::Row;

use super::{parse_col, Db, DbError};
use crate::model::{BootLogLine, Mac};

impl Db {
    /// Appends `lines` in one transaction, then trims each machine that got lines back to its
    /// newest `keep`.
    pub async fn append_boot_log(&self, lines: &[BootLogLine], keep: u32) -> Result<(), DbError> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_tx().await?;
        // Each machine's newest line: a node streaming its kernel log is a node seen.
        let mut macs = std::collections::BTreeMap::new();
        for line in lines {
            let newest = macs.entry(line.mac).or_insert(line.at);
            *newest = (*newest).max(line.at);
            sqlx::query(
                "INSERT INTO boot_log (mac, at, talos_time, facility, priority, seq, clock, msg)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(line.mac.to_string())
            .bind(line.at)
            .bind(&line.talos_time)
            .bind(&line.facility)
            .bind(&line.priority)
            .bind(line.seq)
            .bind(line.clock)
            .bind(&line.msg)
            .execute(&mut *tx)
            .await?;
        }
        for (mac, newest) in macs {
            let mac = mac.to_string();
            sqlx::query(
                "UPDATE machines SET last_seen = MAX(COALESCE(last_seen, 0), ?) WHERE mac = ?",
            )
            .bind(newest)
            .bind(&mac)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "DELETE FROM boot_log WHERE mac = ? AND id <= (
                    SELECT id FROM boot_log WHERE mac = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
            )
            .bind(&mac)
            .bind(&mac)
            .bind(i64::from(keep))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The newest `limit` lines of `mac`'s boot log, oldest first (in the order received).
    pub async fn boot_log(&self, mac: Mac, limit: i64) -> Result<Vec<BootLogLine>, DbError> {
        let rows = sqlx::query(
            "SELECT mac, at, talos_time, facility, priority, seq, clock, msg FROM
                (SELECT * FROM boot_log WHERE mac = ? ORDER BY id DESC LIMIT ?)
             ORDER BY id",
        )
        .bind(mac.to_string())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let text: String = row.try_get("mac")?;
                Ok(BootLogLine {
                    mac: parse_col(&text, "boot log mac")?,
                    at: row.try_get("at")?,
                    talos_time: row.try_get("talos_time")?,
                    facility: row.try_get("facility")?,
                    priority: row.try_get("priority")?,
                    seq: row.try_get("seq")?,
                    clock: row.try_get("clock")?,
                    msg: row.try_get("msg")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(mac: Mac, i: i64) -> BootLogLine {
        BootLogLine {
            mac,
            at: 1_000 + i,
            talos_time: Some(format!("2026-08-21T10:00:{:02}.5Z", i % 60)),
            facility: Some("kern".into()),
            priority: Some("info".into()),
            seq: Some(i),
            clock: Some(i * 1000),
            msg: format!("line {i}"),
        }
    }

    #[tokio::test]
    async fn boot_log_keeps_the_newest_lines_per_machine_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).await.unwrap();
        let a: Mac = "52:54:00:00:00:0a".parse().unwrap();
        let b: Mac = "52:54:00:00:00:0b".parse().unwrap();
        let first: Vec<_> = (0..8).map(|i| line(a, i)).collect();
        db.append_boot_log(&first, 5).await.unwrap();
        let second: Vec<_> = (8..10).map(|i| line(a, i)).chain([line(b, 0)]).collect();
        db.append_boot_log(&second, 5).await.unwrap();
        let got = db.boot_log(a, 100).await.unwrap();
        let seqs: Vec<_> = got.iter().map(|l| l.seq.unwrap()).collect();
        assert_eq!(seqs, vec![5, 6, 7, 8, 9]);
        assert_eq!(got[0], line(a, 5));
        let newest_two: Vec<_> = db
            .boot_log(a, 2)
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.msg)
            .collect();
        assert_eq!(newest_two, vec!["line 8", "line 9"]);
        assert_eq!(db.boot_log(b, 100).await.unwrap(), vec![line(b, 0)]);
    }

    #[tokio::test]
    async fn kernel_log_lines_move_a_known_machines_last_seen_forward_only() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).await.unwrap();
        let a: Mac = "52:54:00:00:00:0a".parse().unwrap();
        let mut m = crate::model::Machine::discovered(a);
        m.last_seen = Some(1_004);
        db.add_machine(&m, 1_000).await.unwrap();
        let seen = |db: Db| async move { db.get_machine(a).await.unwrap().unwrap().last_seen };
        db.append_boot_log(&[line(a, 2), line(a, 9), line(a, 5)], 100)
            .await
            .unwrap();
        assert_eq!(seen(db.clone()).await, Some(1_009));
        db.append_boot_log(&[line(a, 1)], 100).await.unwrap();
        assert_eq!(
            seen(db.clone()).await,
            Some(1_009),
            "an older line moved it back"
        );
    }
}
