//! Crash injection in the bootstrap sequence: the real `bootplane serve` with three control-plane
//! doubles and a worker (`orchestrator::Lab`, real gRPC over mTLS), killed with SIGKILL once per
//! cluster generation at a random point of it, then started again on the same data directory and
//! left to finish. Generation 1 is the first install; every later one starts with an operator's
//! rebuild (through the API or the CLI), after which the doubles come back as wiped machines do
//! (etcd gone everywhere, a network boot into the installer, the config fetched, the Talos API up
//! again) and bootplane sees etcd lost and starts the next generation.
//!
//! Each kill is aimed at one stretch (reports or reinstall, the etcd-lost confirmation, the
//! decision, the call, after it); where it landed is read afterwards from a copy of the database
//! files exactly as the kill left them and from the doubles' records. The invariants come from
//! the doubles' own records: in the end every generation saw exactly one Bootstrap, on the node
//! bootplane stored as its target (the lowest address), marked before it was sent and after the
//! generation was decided, and no call ever reached another node; besides, the stored decision
//! never changed across restarts, every event committed at a kill is still there, SQLite's
//! integrity check passes, and every process ended by the SIGKILL alone.
//!
//! `BOOTPLANE_CRASH_RUNS=N`: N generations, one kill each (4 by default); `BOOTPLANE_CRASH_SEED`
//! replays a campaign.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bootplane::db::{Db, DB_FILE};
use bootplane::model::{BootstrapRecord, BootstrapResult, Event, EventKind, Lifecycle, Mac};
use bootplane::testkit::double::{CallRecord, DoubleConfig, EtcdChange, EtcdCluster};

use super::{all_events, close_fully, lost_events, runs, seed, Rng};
use crate::kit;
use crate::orchestrator::{is_install_script, Lab, Serve, World, CLUSTER, CP1, CP2, CP3, W1};

/// The lab's loopback network, 127.0.61.0/24 (each test has its own).
const NET: u8 = 61;
/// Seconds a Bootstrap call of unknown outcome holds off another; long past anything a call
/// takes here (the doubles answer within 100 ms), so a repeat means the call never arrived.
const HOLDOFF: &str = "2";
/// How long a generation may take to bootstrap after its last restart.
const FINISH: Duration = Duration::from_secs(30);

/// What a kill is aimed at: a trigger seen at the doubles (or the run's start) plus a delay.
#[derive(Clone, Copy, Debug)]
enum Aim {
    /// The run's start: configs fetched and report-ins (first install), or the rebuild, the
    /// reinstalls and their report-ins.
    Start(Duration),
    /// Every control plane asked for its services (etcd looks lost): the confirmation, the new
    /// generation and the decision that follows.
    Confirm(Duration),
    /// The last control plane asked for its etcd members before a decision.
    Decision(Duration),
    /// The Bootstrap call reached the target, its answer not yet back.
    Call(Duration),
    /// After the answer.
    After(Duration),
}

impl Aim {
    fn name(self) -> &'static str {
        match self {
            Aim::Start(_) => "start",
            Aim::Confirm(_) => "confirm",
            Aim::Decision(_) => "decision",
            Aim::Call(_) => "call",
            Aim::After(_) => "after",
        }
    }

    fn choose(rng: &mut Rng, generation: i64, answer_delay: Duration) -> Aim {
        let ms = |n: u64| Duration::from_millis(n);
        // The decision's stretch (decided, marked, the call sent) takes about 10 ms after the
        // last control plane's etcd was asked, so it gets two shares of the kills.
        let kinds = if generation == 1 { 5 } else { 6 };
        match rng.below(kinds) {
            0 => Aim::Start(ms(rng.below(if generation == 1 { 600 } else { 900 }))),
            1 | 2 => Aim::Decision(ms(rng.below(12))),
            3 => Aim::Call(ms(rng.below(answer_delay.as_millis() as u64 + 3))),
            4 => Aim::After(answer_delay + ms(rng.below(150))),
            _ => Aim::Confirm(ms(rng.below(1300))),
        }
    }
}

/// The calls of `method` any double received since `from_ms`, with the node's index.
fn calls_since(lab: &Lab, method: &str, from_ms: i64) -> Vec<(usize, CallRecord)> {
    lab.nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| {
            n.double
                .calls_since(from_ms)
                .into_iter()
                .filter(|c| c.method == method)
                .map(move |c| (i, c))
        })
        .collect()
}

/// When the aim's trigger was seen, if it was.
fn triggered(lab: &Lab, aim: Aim, started: Instant, from_ms: i64) -> Option<Instant> {
    let seen = match aim {
        Aim::Start(_) => return Some(started),
        Aim::Confirm(_) => lab.cps().iter().all(|n| {
            n.double
                .calls_since(from_ms)
                .iter()
                .any(|c| c.method == "ServiceList")
        }),
        Aim::Decision(_) => lab.nodes[CP3]
            .double
            .calls_since(from_ms)
            .iter()
            .any(|c| c.method == "EtcdMemberList"),
        Aim::Call(_) | Aim::After(_) => !calls_since(lab, "Bootstrap", from_ms).is_empty(),
    };
    seen.then(Instant::now)
}

/// The database as a kill left it, read from a copy of its files (the appliance alone recovers
/// the real ones).
struct AtKill {
    generation: i64,
    record: Option<BootstrapRecord>,
    /// Control planes ready, and marked for reinstall since the last bootstrap.
    ready: usize,
    reinstalling: usize,
    events: BTreeMap<Mac, Vec<Event>>,
    integrity: String,
}

async fn read_at_kill(data: &Path, copy: &Path, lab: &Lab, generation: i64) -> AtKill {
    std::fs::create_dir_all(copy).unwrap();
    for suffix in ["", "-wal"] {
        let from = data.join(format!("{DB_FILE}{suffix}"));
        if from.exists() {
            std::fs::copy(&from, copy.join(format!("{DB_FILE}{suffix}"))).unwrap();
        }
    }
    let db = Db::open(copy).await.unwrap();
    let cluster = db.get_cluster(Some(CLUSTER)).await.unwrap().unwrap();
    let mut ready = 0;
    let mut reinstalling = 0;
    for n in lab.cps() {
        let m = db.get_machine(n.mac).await.unwrap().unwrap();
        if m.state == Lifecycle::Ready {
            ready += 1;
        }
        let marked = db.last_event_at(n.mac, EventKind::Reinstall).await.unwrap();
        if marked > cluster.bootstrapped_at {
            reinstalling += 1;
        }
    }
    let at_kill = AtKill {
        generation: cluster.generation,
        record: db.get_bootstrap(CLUSTER, generation).await.unwrap(),
        ready,
        reinstalling,
        events: all_events(&db).await,
        integrity: db.integrity_check().await.unwrap(),
    };
    close_fully(db, copy).await;
    std::fs::remove_dir_all(copy).unwrap();
    at_kill
}

impl AtKill {
    /// Where in generation `generation`'s sequence the kill landed; `called`: the target had
    /// received the Bootstrap when the signal was sent.
    fn phase(&self, generation: i64, called: bool) -> &'static str {
        if self.generation < generation {
            return if self.reinstalling < 3 {
                "rebuild requested"
            } else if self.ready < 3 {
                "reinstall and report-in"
            } else {
                "etcd-lost confirmation"
            };
        }
        match &self.record {
            None if self.ready < 3 => "report-in",
            None => "decision",
            Some(r) if r.outcome.is_some() => "after the outcome",
            Some(r) if r.called_at.is_none() => "decided, not marked",
            Some(_) if !called => "marked, not called",
            Some(_) => "called, outcome not stored",
        }
    }
}

/// One kill: where it was aimed, where it landed, what the doubles saw.
struct Kill {
    generation: i64,
    aim: &'static str,
    phase: &'static str,
    /// A Bootstrap the killed process had sent reached the target only after the signal.
    landed_after: bool,
    record: Option<BootstrapRecord>,
    events: BTreeMap<Mac, Vec<Event>>,
}

/// Waits for the aim, kills `serve` with SIGKILL, reads what the kill left, and starts the
/// appliance again on the same data directory.
#[allow(clippy::too_many_arguments)]
async fn kill_and_restart(
    w: &World,
    dirs: &Path,
    http_port: u16,
    extra: &[&str],
    mut serve: Serve,
    aim: Aim,
    generation: i64,
    from_ms: i64,
) -> (Serve, Kill) {
    let started = Instant::now();
    let delay = match aim {
        Aim::Start(d) | Aim::Confirm(d) | Aim::Decision(d) | Aim::Call(d) | Aim::After(d) => d,
    };
    // A trigger that never comes (the sequence took another path) still gets its kill.
    let deadline = started + Duration::from_secs(20);
    let fire = loop {
        if let Some(at) = triggered(&w.lab, aim, started, from_ms) {
            break at + delay;
        }
        if Instant::now() > deadline {
            break deadline;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    tokio::time::sleep_until(fire.into()).await;
    let called = !calls_since(&w.lab, "Bootstrap", from_ms).is_empty();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(serve.child.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let status = serve.child.wait().await.unwrap();
    {
        use std::os::unix::process::ExitStatusExt as _;
        // Anything else (an exit, a panic, an abort) is the appliance failing by itself.
        assert_eq!(
            status.signal(),
            Some(9),
            "generation {generation}: not our SIGKILL: {status}\n{}",
            serve.log_text()
        );
    }
    let landed_after = !called && !calls_since(&w.lab, "Bootstrap", from_ms).is_empty();
    let at_kill = read_at_kill(&w.data_dir, &dirs.join("at-kill"), &w.lab, generation).await;
    assert_eq!(
        at_kill.integrity, "ok",
        "generation {generation}: the database as the kill left it is damaged"
    );
    let kill = Kill {
        generation,
        aim: aim.name(),
        phase: at_kill.phase(generation, called),
        landed_after,
        record: at_kill.record,
        events: at_kill.events,
    };
    drop(serve);
    let serve = Serve::start(w, dirs, http_port, extra, false).await;
    (serve, kill)
}

/// Runs `request` until the appliance answers it (a kill cuts requests; the test restarts it).
async fn until_answered<T, F, Fut>(w: &World, what: &str, request: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, reqwest::Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match request().await {
            Ok(answer) => return answer,
            Err(e) => assert!(
                Instant::now() < deadline,
                "{what}: no answer for 30 s ({e})\n{}",
                w.dump().await
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What Talos does early in boot: fetch its config (again after a cut request, as Talos does).
async fn fetch_config(w: &World, i: usize) {
    let url = format!("{}/config?mac={}", w.base, w.node(i).mac);
    let (code, body) = until_answered(w, "a config fetch", || async {
        let r = w.http.get(&url).send().await?;
        Ok((r.status().as_u16(), r.text().await?))
    })
    .await;
    assert_eq!(code, 200, "config of {}: {body}", w.node(i).name);
}

/// A wiped machine's network boot: it must get the installer.
async fn netboot_into_installer(w: &World, i: usize) {
    let url = format!(
        "{}/machine.ipxe?mac={}&arch=x86_64",
        w.base,
        w.node(i).mac.hyphenated()
    );
    let client = w.client_of(i);
    let (code, body) = until_answered(w, "a network boot", || async {
        let r = client.get(&url).send().await?;
        Ok((r.status().as_u16(), r.text().await?))
    })
    .await;
    assert!(
        code == 200 && is_install_script(&body),
        "{} rebuilt and wiped, but its network boot got {code}:\n{body}",
        w.node(i).name
    );
}

/// The operator rebuilds the cluster, through the API or the CLI.
async fn rebuild(w: &World, token: &str, through_api: bool) {
    if !through_api {
        let out = w
            .cli(&["cluster", "rebuild", "--yes-destroy-everything"])
            .await;
        assert!(
            out.contains("reinstall at their next network boot"),
            "{out}"
        );
        return;
    }
    let url = format!("{}/api/v1/cluster/rebuild", w.base);
    let (code, body) = until_answered(w, "the rebuild", || async {
        let r = w
            .http
            .post(&url)
            .bearer_auth(token)
            .json(&serde_json::json!({ "confirm": CLUSTER }))
            .send()
            .await?;
        Ok((r.status().as_u16(), r.text().await?))
    })
    .await;
    assert_eq!(code, 202, "rebuild: {body}");
}

/// The sequence of one generation as the machines (and, after the first, the operator) drive
/// it: each step is repeated until the appliance answers, as Talos and operators do.
async fn drive(
    w: &World,
    generation: i64,
    order: &[usize],
    gaps: &[Duration],
    token: &str,
    api: bool,
) {
    if generation > 1 {
        rebuild(w, token, api).await;
        // The disks are wiped: every node's Talos API goes away and etcd is gone everywhere.
        for n in &w.lab.nodes {
            n.stop().await;
        }
        for n in w.lab.cps() {
            n.double.set_etcd(EtcdChange::Empty).unwrap();
        }
        w.lab
            .store
            .update(|c| {
                *c = EtcdCluster::default();
                Ok(())
            })
            .unwrap();
    }
    for (&i, &gap) in order.iter().zip(gaps) {
        tokio::time::sleep(gap).await;
        if generation > 1 {
            netboot_into_installer(w, i).await;
        }
        fetch_config(w, i).await;
        if generation > 1 {
            // Installed: Talos runs from the disk and its API answers again.
            w.node(i).restart(w.lab.port).await;
        }
    }
}

/// Waits until generation `generation` is current and finished, and a Bootstrap of it was seen.
async fn wait_finished(w: &World, serve: &Serve, generation: i64, from_ms: i64) -> BootstrapRecord {
    let deadline = Instant::now() + FINISH;
    loop {
        let cluster = w.db.get_cluster(Some(CLUSTER)).await.unwrap().unwrap();
        let record = w.db.get_bootstrap(CLUSTER, generation).await.unwrap();
        let called = !calls_since(&w.lab, "Bootstrap", from_ms).is_empty();
        if let (true, Some(r), true) = (cluster.generation == generation, &record, called) {
            if r.outcome.is_some() {
                return r.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "generation {generation} not bootstrapped {FINISH:?} after the restart\n{}\n{}",
            w.dump().await,
            serve.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The data directory and the appliance's logs (`serve-N.log`), kept when the campaign fails.
struct KeepOnFailure(Option<tempfile::TempDir>);

impl Drop for KeepOnFailure {
    fn drop(&mut self) {
        if let (true, Some(dirs)) = (std::thread::panicking(), self.0.take()) {
            eprintln!("the campaign's files are kept in {}", dirs.keep().display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_anywhere_in_the_bootstrap_sequence_never_bootstraps_twice() {
    let generations = i64::try_from(runs(4)).unwrap();
    let seed = seed();
    eprintln!("bootstrap crash injection: {generations} generations, BOOTPLANE_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let kept = KeepOnFailure(Some(tempfile::tempdir().unwrap()));
    let dirs = kept.0.as_ref().unwrap();
    // Control planes join the etcd cluster by themselves once one exists, as Talos's do.
    let lab = Lab::new_with(NET, |c: &mut DoubleConfig| c.auto_join = true);
    let (mut w, http_port) = World::for_binary(lab, dirs.path()).await;
    for (name, len) in [("vmlinuz-amd64", 1000), ("initramfs-amd64.xz", 1000)] {
        let dir = dirs.path().join("images").join(kit::VERSION);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), kit::pattern(len, 7)).unwrap();
    }
    let (_, token) = bootplane::auth::create_token(&w.db, "crash", None, kit::now_ms())
        .await
        .unwrap();
    let extra = ["--bootstrap-holdoff", HOLDOFF, "--etcd-lost-confirm", "1"];
    // While no kill is due, `w.db` is a connection to the appliance's database; otherwise it is
    // this idle one, so none of the test's is open at a kill.
    let idle = Db::open(&dirs.path().join("idle")).await.unwrap();
    let db = std::mem::replace(&mut w.db, idle.clone());
    close_fully(db, &w.data_dir).await;
    let mut serve = Serve::start(&w, dirs.path(), http_port, &extra, false).await;

    let mut kills: Vec<Kill> = Vec::new();
    // Each generation's stretch of the doubles' records: [start, next start).
    let mut starts: Vec<i64> = Vec::new();
    let mut finished: Vec<BootstrapRecord> = Vec::new();
    for generation in 1..=generations {
        let answer_delay = Duration::from_millis(rng.below(80));
        for n in w.lab.cps() {
            n.double.set_bootstrap_answer_delay(answer_delay);
        }
        let aim = Aim::choose(&mut rng, generation, answer_delay);
        let mut order = vec![CP1, CP2, CP3, W1];
        for k in (1..order.len()).rev() {
            order.swap(k, rng.below(k as u64 + 1) as usize);
        }
        let gaps: Vec<Duration> = order
            .iter()
            .map(|_| Duration::from_millis(rng.below(150)))
            .collect();
        let through_api = rng.below(2) == 0;

        // No connection of the test's is open at a kill: the appliance alone recovers the file.
        let from_ms = kit::now_ms();
        starts.push(from_ms);
        let (restarted, kill) = {
            let (killed, ()) = tokio::join!(
                kill_and_restart(
                    &w,
                    dirs.path(),
                    http_port,
                    &extra,
                    serve,
                    aim,
                    generation,
                    from_ms
                ),
                drive(&w, generation, &order, &gaps, &token, through_api),
            );
            killed
        };
        serve = restarted;
        w.db = Db::open(&w.data_dir).await.unwrap();
        let record = wait_finished(&w, &serve, generation, from_ms).await;
        let g = format!(
            "generation {generation} (seed {seed}, kill aimed at {}, landed in {})",
            kill.aim, kill.phase
        );

        // What the kill left is still there: the stored decision unchanged, the call count
        // never lower, every committed event kept.
        if let Some(then) = &kill.record {
            assert_eq!(
                (then.target_mac, then.target_ip, then.decided_at),
                (record.target_mac, record.target_ip, record.decided_at),
                "{g}: the stored decision changed across the restart"
            );
            assert!(
                then.calls <= record.calls,
                "{g}: calls went down: {then:?} {record:?}"
            );
        }
        let lost = lost_events(&kill.events, &all_events(&w.db).await);
        assert!(
            lost.is_empty(),
            "{g}: committed events lost or changed: {lost:?}"
        );
        assert_eq!(
            w.db.integrity_check().await.unwrap(),
            "ok",
            "{g}: database damaged"
        );
        eprintln!(
            "{g}: outcome {:?}, {} call(s) marked{}",
            record.outcome.map(|o| o.as_str()),
            record.calls,
            if kill.landed_after {
                ", the killed process's call landed after the kill"
            } else {
                ""
            }
        );
        finished.push(record);
        kills.push(kill);
        let db = std::mem::replace(&mut w.db, idle.clone());
        close_fully(db, &w.data_dir).await;
    }
    // A stray call of the last generation would come within an evaluation or two.
    w.db = Db::open(&w.data_dir).await.unwrap();
    tokio::time::sleep(
        bootplane::orchestrator::Settings::default().tick + Duration::from_millis(1500),
    )
    .await;
    let end_ms = kit::now_ms();

    // The invariants, from the doubles' own records.
    let target = w.node(CP1);
    // Generations by the number of Bootstraps the doubles saw.
    let mut seen: BTreeMap<usize, usize> = BTreeMap::new();
    for (k, record) in finished.iter().enumerate() {
        let generation = k as i64 + 1;
        let (from, to) = (starts[k], starts.get(k + 1).copied().unwrap_or(end_ms + 1));
        let calls: Vec<(usize, CallRecord)> = calls_since(&w.lab, "Bootstrap", from)
            .into_iter()
            .filter(|(_, c)| c.at_ms < to)
            .collect();
        let g = format!("generation {generation} (seed {seed})");
        *seen.entry(calls.len()).or_default() += 1;
        assert_eq!(
            calls.len(),
            1,
            "{g}: Bootstraps seen: {calls:#?}\n{}",
            w.dump().await
        );
        let (node, call) = &calls[0];
        assert_eq!(*node, CP1, "{g}: Bootstrap reached {}", w.node(*node).name);
        assert_eq!(call.code, "Ok", "{g}: {call:?}");
        assert_eq!(
            (record.target_mac, record.target_ip),
            (target.mac, target.ip),
            "{g}: the stored target is not the lowest address: {record:?}"
        );
        assert_eq!(
            record.outcome,
            Some(BootstrapResult::Bootstrapped),
            "{g}: {record:?}"
        );
        assert!(
            record.calls >= 1,
            "{g}: a call went out unmarked: {record:?}"
        );
        let marked = record
            .called_at
            .expect("an outcome after a call has its mark");
        assert!(
            record.decided_at <= marked && marked <= call.at_ms,
            "{g}: decided {}, marked {marked}, called {}: the mark must come before the call",
            record.decided_at,
            call.at_ms
        );
        assert!(
            record.finished_at.is_some_and(|f| f >= call.at_ms),
            "{g}: an outcome before the call: {record:?} {call:?}"
        );
    }
    let cluster = w.db.get_cluster(Some(CLUSTER)).await.unwrap().unwrap();
    assert_eq!(cluster.generation, generations, "{cluster:?}");
    let history = w.db.bootstrap_history(CLUSTER).await.unwrap();
    assert_eq!(
        history, finished,
        "the stored history changed after the fact"
    );
    let removals = w.lab.calls_of("EtcdRemoveMemberByID");
    assert!(
        removals.is_empty(),
        "no member of a live etcd is removed: {removals:#?}"
    );
    assert!(
        calls_since(&w.lab, "Bootstrap", 0)
            .iter()
            .all(|(i, _)| *i == CP1),
        "a Bootstrap reached a node other than the target"
    );
    w.db.close().await;
    drop(serve);

    let mut phases: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for k in &kills {
        *phases
            .entry((
                if k.generation == 1 {
                    "first install"
                } else {
                    "after a wipe"
                },
                k.phase,
            ))
            .or_default() += 1;
    }
    let landed_after = kills.iter().filter(|k| k.landed_after).count();
    // Generations by the calls bootplane marked (two: the first one never reached the node).
    let mut marks: BTreeMap<i64, usize> = BTreeMap::new();
    for r in &finished {
        *marks.entry(r.calls).or_default() += 1;
    }
    eprintln!(
        "bootstrap crash injection (seed {seed}): {} kills, {generations} generations, generations by Bootstraps seen {seen:?}, by calls marked {marks:?}, {landed_after} call(s) landing after their kill, 0 violations",
        kills.len()
    );
    for ((when, phase), n) in phases {
        eprintln!("  {n:>4} killed {phase} ({when})");
    }
}
