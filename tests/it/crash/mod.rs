//! Crash injection: the real `bootplane serve`, killed with SIGKILL at a random moment while
//! operators save machines through the API and unknown machines ask for boot scripts (each a
//! discovery and event batches), then started again on the same data directory (no other
//! connection open, so the appliance itself recovers the file). After every restart: each
//! machine the API answered 201 for is there as it was sent, every event committed before the
//! kill (read just before it) is still there unchanged, SQLite's integrity check passes, and the
//! appliance serves again. The process must end by the kill alone, and no save may be refused.
//!
//! The same harness kills the appliance under three more loads: full-DHCP lease writes
//! (`leases`), boot asset downloads (`assets`), and the bootstrap sequence against Talos
//! doubles across cluster wipes and new generations (`bootstrap`, one kill per generation).
//!
//! `BOOTPLANE_CRASH_RUNS=N` sets the number of kills of each scenario (10 by default, what CI
//! runs, 4 generations for `bootstrap`; `scripts/crash --runs 100` runs a campaign);
//! `BOOTPLANE_CRASH_SEED` replays one.

mod assets;
mod bootstrap;
mod leases;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bootplane::db::Db;
use bootplane::model::{Event, Mac, Role};
use serde_json::json;

use crate::kit;

/// xorshift64*: a seeded stream of kill times and MACs, so a failing run can be replayed.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A stream whose first numbers are already well mixed, whatever the seed (a small seed
    /// such as 777 starts xorshift with runs of alike numbers): the seed through splitmix64.
    fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    /// A number in `0..n`, from the stream's high bits.
    fn below(&mut self, n: u64) -> u64 {
        (self.next() >> 32) % n.max(1)
    }
}

/// The campaign's kills and seed (`BOOTPLANE_CRASH_RUNS`, `BOOTPLANE_CRASH_SEED`), printed so a
/// failing campaign can be replayed.
pub(crate) fn campaign(scenario: &str) -> (usize, u64) {
    let runs: usize = std::env::var("BOOTPLANE_CRASH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let seed: u64 = std::env::var("BOOTPLANE_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| (kit::now_ms() as u64) | 1);
    eprintln!("{scenario}: {runs} runs, BOOTPLANE_CRASH_SEED={seed}");
    (runs, seed)
}

/// Kills `child` with SIGKILL and fails unless that is what ended it: anything else (a panic,
/// an abort under the load) is the appliance failing alone.
async fn kill(child: &mut tokio::process::Child, run: usize, seed: u64) {
    use std::os::unix::process::ExitStatusExt as _;
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "run {run} (seed {seed}): not our SIGKILL: {status}"
    );
}

/// `BOOTPLANE_CRASH_RUNS`, else `default`.
fn runs(default: usize) -> usize {
    std::env::var("BOOTPLANE_CRASH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `BOOTPLANE_CRASH_SEED`, else one from the clock.
fn seed() -> u64 {
    std::env::var("BOOTPLANE_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| (kit::now_ms() as u64) | 1)
}

/// A temporary directory with the appliance's `data/`, `ipxe/` and `images/` in it, as
/// `kit::served::serve_without_dhcp` and `serve_full_dhcp` expect.
fn scratch() -> tempfile::TempDir {
    let dirs = tempfile::tempdir().unwrap();
    for d in ["data", "ipxe", "images"] {
        std::fs::create_dir_all(dirs.path().join(d)).unwrap();
    }
    dirs
}

/// The database the restarted appliance recovered, opened by the test; SQLite's integrity
/// check must pass.
async fn reopen_checked(data: &Path, run: usize, seed: u64) -> Db {
    let db = Db::open(data).await.unwrap();
    assert_eq!(
        db.integrity_check().await.unwrap(),
        "ok",
        "run {run} (seed {seed}): the database is damaged"
    );
    db
}

fn start(dirs: &Path, http_port: u16, run: usize) -> tokio::process::Child {
    let log = std::fs::File::create(dirs.join(format!("serve-{run}.log"))).unwrap();
    kit::served::serve_without_dhcp(dirs, http_port)
        .env("BOOTPLANE_LOG", "warn")
        .stderr(log)
        .spawn()
        .unwrap()
}

async fn wait_healthy(http: &reqwest::Client, base: &str, child: &mut tokio::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("bootplane serve exited at start: {status}");
        }
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "/healthz never answered");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Closes `db` (the last handle to it), and waits until this process holds no file of
/// `data_dir` open: sqlx's `close` can return with a connection still open, closed only when the
/// pool is dropped. A connection of the test's still open at a kill spares the restarted
/// appliance its own recovery of the file: SQLite then trusts the shared index the killed process
/// left, and a commit the kill cut short (written, never returned) is dropped where a recovery
/// keeps it, so the state the test read from the files would not be the one the appliance sees.
async fn close_fully(db: Db, data_dir: &Path) {
    db.close().await;
    drop(db);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open: Vec<_> = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .filter(|target| target.starts_with(data_dir))
            .collect();
        if open.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the test's database connections stay open: {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every machine's events, oldest first (ties in a fixed order).
async fn all_events(db: &Db) -> BTreeMap<Mac, Vec<Event>> {
    let mut out = BTreeMap::new();
    for m in db.list_machines().await.unwrap() {
        let mut events = db.events(m.mac, 1_000_000).await.unwrap();
        events.sort_by(|a, b| {
            (a.at, a.kind.as_str(), &a.detail).cmp(&(b.at, b.kind.as_str(), &b.detail))
        });
        out.insert(m.mac, events);
    }
    out
}

/// Events in `before` that `after` lacks, per machine: the log only ever grows, so after a
/// restart every event once committed is still there unchanged. Compared as multisets, since
/// events committed later may sort anywhere among them.
fn lost_events(
    before: &BTreeMap<Mac, Vec<Event>>,
    after: &BTreeMap<Mac, Vec<Event>>,
) -> Vec<(Mac, i64, String, String)> {
    fn count(list: &[Event]) -> BTreeMap<(i64, &str, &str), usize> {
        let mut n = BTreeMap::new();
        for e in list {
            *n.entry((e.at, e.kind.as_str(), e.detail.as_str()))
                .or_default() += 1;
        }
        n
    }
    let mut lost = Vec::new();
    for (mac, events) in before {
        let now = after.get(mac).map(Vec::as_slice).unwrap_or(&[]);
        let is = count(now);
        for ((at, kind, detail), n) in count(events) {
            if is.get(&(at, kind, detail)).copied().unwrap_or(0) < n {
                lost.push((*mac, at, kind.to_string(), detail.to_string()));
            }
        }
    }
    lost
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_no_committed_row_and_no_event() {
    let (runs, seed) = campaign("crash injection");
    let _turn = kit::turns::shared_async().await;
    let dirs = scratch();
    let data = dirs.path().join("data");
    let db = Db::open(&data).await.unwrap();
    let (_, token) = bootplane::auth::create_token(&db, "crash", None, kit::now_ms())
        .await
        .unwrap();
    // No connection of the test's stays open while the appliance runs: after each kill it is
    // the restarted appliance that finds the file as the kill left it and recovers it.
    close_fully(db, &data).await;
    let http_port = kit::served::free_tcp_port();
    let base = format!("http://127.0.0.1:{http_port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut rng = Rng(seed);
    // Machines the API said it saved: (MAC, hostname, address).
    let saved: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
    let mut next_machine = 0u32;
    let mut kills_with_writes_in_flight = 0;
    let mut child = start(dirs.path(), http_port, 0);
    wait_healthy(&http, &base, &mut child).await;
    for run in 0..runs {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut load = Vec::new();
        // Operators: machines saved one after another through the API.
        {
            let (http, base, token, saved, stop) = (
                http.clone(),
                base.clone(),
                token.clone(),
                saved.clone(),
                stop.clone(),
            );
            let first = next_machine;
            next_machine += 1000;
            load.push(tokio::spawn(async move {
                let mut n = first;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    // Host numbers 0 and 255 are not given to machines.
                    if matches!(n & 0xff, 0 | 255) {
                        continue;
                    }
                    let mac = format!(
                        "52:54:01:{:02x}:{:02x}:{:02x}",
                        n >> 16,
                        (n >> 8) & 0xff,
                        n & 0xff
                    );
                    let hostname = format!("w-{n}");
                    let ip = format!(
                        "127.{}.{}.{}/8",
                        1 + ((n >> 16) & 0x7f),
                        (n >> 8) & 0xff,
                        n & 0xff
                    );
                    let r = http
                        .post(format!("{base}/api/v1/machines"))
                        .bearer_auth(&token)
                        .json(
                            &json!({"mac": mac, "role": "worker", "hostname": hostname, "ip": ip}),
                        )
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == reqwest::StatusCode::CREATED => {
                            saved.lock().unwrap().push((mac, hostname, ip));
                        }
                        Ok(r) => {
                            // A kill shows as a cut connection, never as an answer: a refusal
                            // is this harness's mistake, a 5xx the appliance's.
                            let status = r.status();
                            let body = r.text().await.unwrap_or_default();
                            panic!("a save answered {status}: {body}");
                        }
                        // The process died under the request: not answered, not counted.
                        Err(_) => return true,
                    }
                }
                false
            }));
        }
        // Unknown machines asking for their scripts: discoveries and event batches.
        for k in 0..4u32 {
            let (http, base, stop) = (http.clone(), base.clone(), stop.clone());
            let salt = (rng.next() & 0xffff) as u32;
            load.push(tokio::spawn(async move {
                let mut i = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    // A bounded set (300 in all), under the cap on unclaimed machines (whose pruning
                    // deletes the oldest by design).
                    let mac = format!("52:54:02:{k:02x}:00:{:02x}", (salt + i) % 75);
                    if http
                        .get(format!("{base}/machine.ipxe?mac={mac}&arch=x86_64"))
                        .send()
                        .await
                        .is_err()
                    {
                        return true;
                    }
                }
                false
            }));
        }
        let kill_after = Duration::from_millis(50 + rng.next() % 1200);
        tokio::time::sleep(kill_after).await;
        // What is committed now, read through a connection of the test's own just before the
        // kill, with the load still running: all of it must be there after the restart.
        let db = Db::open(&data).await.unwrap();
        let before_events = all_events(&db).await;
        close_fully(db, &data).await;
        kill(&mut child, run, seed).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in load {
            if task.await.unwrap() {
                kills_with_writes_in_flight += 1;
            }
        }

        // The appliance starts again on what the kill left; then the invariants.
        child = start(dirs.path(), http_port, run + 1);
        wait_healthy(&http, &base, &mut child).await;
        let db = reopen_checked(&data, run, seed).await;
        let machines: BTreeMap<Mac, bootplane::model::Machine> = db
            .list_machines()
            .await
            .unwrap()
            .into_iter()
            .map(|m| (m.mac, m))
            .collect();
        for (mac, hostname, ip) in saved.lock().unwrap().iter() {
            let m = machines.get(&mac.parse().unwrap()).unwrap_or_else(|| {
                panic!("run {run} (seed {seed}): {mac} was saved (201) and is gone")
            });
            assert_eq!(m.role, Role::Worker, "{mac}");
            assert_eq!(m.hostname.as_deref(), Some(hostname.as_str()), "{mac}");
            assert_eq!(
                m.ip.map(|ip| ip.to_string()).as_deref(),
                Some(ip.as_str()),
                "{mac}"
            );
        }
        let after_events = all_events(&db).await;
        close_fully(db, &data).await;
        let missing = lost_events(&before_events, &after_events);
        assert!(
            missing.is_empty(),
            "run {run} (seed {seed}): committed events changed or went missing: {missing:?}"
        );
    }
    child.start_kill().unwrap();
    let saved = saved.lock().unwrap().len();
    eprintln!(
        "crash injection: {runs} kills, {saved} machines saved and all kept, {kills_with_writes_in_flight} load tasks cut mid-request, 0 invariant violations"
    );
    assert!(saved > 0, "no machine was ever saved: the load did not run");
}
