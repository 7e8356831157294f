//! The orchestrator end to end: a running appliance (in process, or the real binary for the
//! crash test), three Talos node doubles as control planes and one as a worker, each on its
//! own loopback address (127.0.N.11-13 and 127.0.N.21, N distinct per test) and all on the
//! appliance's Talos API port, sharing one etcd member list like a real cluster. Machines
//! "boot" the way nodes do: by GETting their iPXE script and `/config?mac=` over HTTP; the
//! orchestrator then probes their Talos API with the cluster's certificates.

use std::fmt::Write as _;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::kit::{self, Appliance, VERSION};
use bootplane::db::Db;
use bootplane::model::{
    BootstrapRecord, Event, EventKind, Ipv4Cidr, Lifecycle, Mac, Machine, Role,
};
use bootplane::orchestrator::Settings;
use bootplane::testkit::double::{
    CallRecord, DoubleConfig, EtcdChange, EtcdStore, NodeRole, Phase, PhaseChange, TalosDouble,
};
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

pub(crate) const CLUSTER: &str = "lab";
/// Indexes into `Lab::nodes`.
pub(crate) const CP1: usize = 0;
pub(crate) const CP2: usize = 1;
pub(crate) const CP3: usize = 2;
pub(crate) const W1: usize = 3;

/// The orchestrator re-evaluates every cluster at least this often without any signal;
/// waiting a little longer than this shows what a re-evaluation does (or does not do).
fn tick_and_a_bit() -> Duration {
    Settings::default().tick + Duration::from_millis(1500)
}

/// A node: its machine record's identity and the Talos double that answers for it.
pub(crate) struct Node {
    pub(crate) name: &'static str,
    pub(crate) mac: Mac,
    pub(crate) ip: Ipv4Addr,
    role: Role,
    pub(crate) double: TalosDouble,
    /// Where the double is served (the test's runtime unless the test needs it apart).
    rt: Handle,
    /// The double's server while it runs (a lock, so one node can reboot while the test
    /// network-boots others).
    server: std::sync::Mutex<Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>>,
}

impl Node {
    fn serve(&self, listener: std::net::TcpListener) {
        let (stop, stopped) = oneshot::channel::<()>();
        let double = self.double.clone();
        let task = self.rt.spawn(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            double
                .serve(listener, async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        *self.server.lock().unwrap() = Some((stop, task));
    }

    /// The node's Talos API goes away (it is powered off, or its disk no longer boots).
    pub(crate) async fn stop(&self) {
        let server = self.server.lock().unwrap().take();
        if let Some((stop, task)) = server {
            let _ = stop.send(());
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("the double did not stop")
                .unwrap();
        }
    }

    /// The node's Talos API answers again, on the same address and port.
    pub(crate) async fn restart(&self, port: u16) {
        assert!(self.server.lock().unwrap().is_none());
        let listener = std::net::TcpListener::bind((self.ip, port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        self.serve(listener);
    }

    fn machine(&self) -> Machine {
        let mut m = Machine::discovered(self.mac);
        m.cluster = CLUSTER.into();
        m.role = self.role;
        m.hostname = Some(self.name.into());
        m.ip = Some(Ipv4Cidr::new(self.ip, 24).unwrap());
        m
    }
}

/// Three control-plane doubles and one worker double on 127.0.`net`.x, one shared port.
pub(crate) struct Lab {
    net: u8,
    pub(crate) port: u16,
    pub(crate) store: EtcdStore,
    pub(crate) nodes: Vec<Node>,
}

impl Lab {
    pub(crate) fn new(net: u8) -> Lab {
        Lab::new_on(net, Handle::current())
    }

    /// The doubles served on `rt`.
    fn new_on(net: u8, rt: Handle) -> Lab {
        Lab::assemble(net, rt, |_| {})
    }

    /// The doubles served on this runtime, each set up by `customise` too.
    pub(crate) fn new_with(net: u8, customise: impl Fn(&mut DoubleConfig)) -> Lab {
        Lab::assemble(net, Handle::current(), customise)
    }

    fn assemble(net: u8, rt: Handle, customise: impl Fn(&mut DoubleConfig)) -> Lab {
        let plan: [(&'static str, u8, Role); 4] = [
            ("cp1", 11, Role::Controlplane),
            ("cp2", 12, Role::Controlplane),
            ("cp3", 13, Role::Controlplane),
            ("w1", 21, Role::Worker),
        ];
        let ips: Vec<Ipv4Addr> = plan
            .iter()
            .map(|(_, host, _)| Ipv4Addr::new(127, 0, net, *host))
            .collect();
        let (port, listeners) = bind_one_port(&ips);
        let store = EtcdStore::memory();
        let mut nodes = Vec::new();
        for ((name, host, role), listener) in plan.into_iter().zip(listeners) {
            let ip = Ipv4Addr::new(127, 0, net, host);
            let node_role = match role {
                Role::Worker => NodeRole::Worker,
                _ => NodeRole::Controlplane,
            };
            let mut config = DoubleConfig::new(name, node_role, (ip, port).into());
            config.etcd = store.clone();
            customise(&mut config);
            let double = TalosDouble::new(kit::cached_bundle(), config).unwrap();
            let node = Node {
                name,
                mac: Mac([0x52, 0x54, 0x00, net, 0x00, host]),
                ip,
                role,
                double,
                rt: rt.clone(),
                server: Default::default(),
            };
            node.serve(listener);
            nodes.push(node);
        }
        Lab {
            net,
            port,
            store,
            nodes,
        }
    }

    pub(crate) fn cps(&self) -> &[Node] {
        &self.nodes[CP1..=CP3]
    }

    /// Every call of `method` that reached any double, with the node's name.
    pub(crate) fn calls_of(&self, method: &str) -> Vec<(&'static str, CallRecord)> {
        self.nodes
            .iter()
            .flat_map(|n| n.double.calls_of(method).into_iter().map(|c| (n.name, c)))
            .collect()
    }

    fn member_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .store
            .load()
            .unwrap()
            .members
            .into_iter()
            .map(|m| m.hostname)
            .collect();
        names.sort();
        names
    }
}

/// Binds every address on one port (the appliance probes a single Talos API port).
fn bind_one_port(ips: &[Ipv4Addr]) -> (u16, Vec<std::net::TcpListener>) {
    for _ in 0..50 {
        let first = std::net::TcpListener::bind((ips[0], 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for ip in &ips[1..] {
            match std::net::TcpListener::bind((*ip, port)) {
                Ok(l) => listeners.push(l),
                Err(_) => break,
            }
        }
        if listeners.len() == ips.len() {
            for l in &listeners {
                l.set_nonblocking(true).unwrap();
            }
            return (port, listeners);
        }
    }
    panic!("no port free on all of {ips:?}");
}

/// A runtime of its own on its own thread, for doubles whose handlers a test blocks; it
/// shuts down when this is dropped.
struct SideRuntime {
    handle: Handle,
    _stop: std::sync::mpsc::Sender<()>,
}

impl SideRuntime {
    fn new() -> SideRuntime {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .enable_all()
                .build()
                .unwrap();
            handle_tx.send(rt.handle().clone()).unwrap();
            let _ = stopped.recv();
            rt.shutdown_timeout(Duration::from_secs(2));
        });
        SideRuntime {
            handle: handle_rx.recv().unwrap(),
            _stop: stop,
        }
    }
}

/// A cluster under test: the appliance (or the database of a bootplane process), the
/// doubles, and how to reach the appliance over HTTP.
pub(crate) struct World {
    pub(crate) lab: Lab,
    pub(crate) db: Db,
    pub(crate) data_dir: PathBuf,
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
    app: Option<Appliance>,
    /// Nodes whose address bootplane's DHCP has bound to their MAC (`World::lease`).
    leased: std::sync::Mutex<std::collections::HashSet<usize>>,
}

/// Initialises the cluster through the database (with the shared bundle, so the doubles and
/// bootplane trust the same OS CA) and adds the lab's machines with their static addresses.
pub(crate) async fn provision(db: &Db, lab: &Lab) {
    let machines: Vec<Machine> = lab.nodes.iter().map(Node::machine).collect();
    let machines: Vec<&Machine> = machines.iter().collect();
    kit::init_lab_cluster(db, Some(CLUSTER), lab.net, &machines).await;
}

impl World {
    /// A world for the real binary (`Serve`): `data/`, `ipxe/` and `images/` under `dirs`, the
    /// cluster and the lab's machines in the database, and a free HTTP port for the appliance.
    pub(crate) async fn for_binary(lab: Lab, dirs: &Path) -> (World, u16) {
        let data_dir = dirs.join("data");
        for d in ["data", "ipxe", "images"] {
            std::fs::create_dir_all(dirs.join(d)).unwrap();
        }
        let db = Db::open(&data_dir).await.unwrap();
        provision(&db, &lab).await;
        let http_port = kit::served::free_tcp_port();
        let w = World {
            lab,
            db,
            data_dir,
            base: format!("http://127.0.0.1:{http_port}"),
            http: reqwest::Client::new(),
            app: None,
            leased: Default::default(),
        };
        (w, http_port)
    }

    /// The appliance in process, probing the lab's port, with `customise` applied.
    async fn start(net: u8, customise: impl FnOnce(&mut bootplane::config::ServeOptions)) -> World {
        World::start_on(Lab::new(net), customise).await
    }

    async fn start_on(
        lab: Lab,
        customise: impl FnOnce(&mut bootplane::config::ServeOptions),
    ) -> World {
        let port = lab.port;
        let app = Appliance::start_with(|o| {
            o.talos_api_port = Some(port);
            // A wiped disk is confirmed after 1 s of failed probes here (30 s by default).
            o.wipe_confirm = Some(1);
            // bootplane is the LAN's DHCP server: a node's network boot comes from the address
            // it leased to that node, which is the evidence that the machine itself asks.
            o.dhcp_mode = Some(bootplane::config::DhcpMode::Full);
            customise(o);
        })
        .await;
        app.add_assets(1000, 1000);
        provision(&app.db, &lab).await;
        World {
            db: app.db.clone(),
            data_dir: app.data.path().to_path_buf(),
            base: app.url(""),
            http: reqwest::Client::new(),
            app: Some(app),
            lab,
            leased: Default::default(),
        }
    }

    /// What a node's firmware does first: a DHCP exchange with bootplane, which binds the
    /// node's static address to its MAC (retransmitted until the inventory holds the node).
    async fn lease(&self, i: usize) {
        if self.leased.lock().unwrap().contains(&i) {
            return;
        }
        let node = self.node(i);
        self.app
            .as_ref()
            .expect("an appliance in process")
            .lease(node.mac, node.ip)
            .await;
        self.leased.lock().unwrap().insert(i);
    }

    /// An HTTP client whose requests leave from node `i`'s own address.
    pub(crate) fn client_of(&self, i: usize) -> reqwest::Client {
        reqwest::Client::builder()
            .local_address(Some(self.node(i).ip.into()))
            .build()
            .unwrap()
    }

    pub(crate) fn node(&self, i: usize) -> &Node {
        &self.lab.nodes[i]
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// What Talos does early in boot: fetch its config from the `talos.config=` URL.
    async fn fetch_config(&self, i: usize) {
        let (code, body) = self.get(&format!("/config?mac={}", self.node(i).mac)).await;
        assert_eq!(code, 200, "config of {}: {body}", self.node(i).name);
    }

    /// What iPXE does on a network boot: fetch the machine's script.
    async fn netboot(&self, i: usize) -> String {
        self.lease(i).await;
        let response = self
            .client_of(i)
            .get(format!(
                "{}/machine.ipxe?mac={}&arch=x86_64",
                self.base,
                self.node(i).mac.hyphenated()
            ))
            .send()
            .await
            .unwrap();
        let (code, body) = (response.status().as_u16(), response.text().await.unwrap());
        assert_eq!(code, 200, "script of {}: {body}", self.node(i).name);
        body
    }

    /// What the firmware of a machine whose disk was wiped does: it is handed to its disk,
    /// finds nothing there and network-boots again, until bootplane has seen its Talos API
    /// silent long enough to call it wiped and sends the installer. Returns that script.
    async fn netboot_until_reinstalled(&self, i: usize) -> String {
        let started = Instant::now();
        loop {
            let script = self.netboot(i).await;
            if is_install_script(&script) {
                return script;
            }
            assert!(is_disk_handoff(&script), "{script}");
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{} still handed to its disk after 20 s\n{}",
                self.node(i).name,
                self.dump().await
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn machine(&self, i: usize) -> Machine {
        self.db
            .get_machine(self.node(i).mac)
            .await
            .unwrap()
            .unwrap()
    }

    async fn events(&self, i: usize) -> Vec<Event> {
        self.db.events(self.node(i).mac, 1000).await.unwrap()
    }

    async fn record(&self, generation: i64) -> Option<BootstrapRecord> {
        self.db.get_bootstrap(CLUSTER, generation).await.unwrap()
    }

    /// Polls `check` until it gives a value; on time-out, fails with the whole state.
    async fn wait<T, F, Fut>(&self, what: &str, limit: Duration, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(value) = check().await {
                return value;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {limit:?} waiting for {what}\n{}",
                    self.dump().await
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_state(&self, i: usize, state: Lifecycle) -> Machine {
        let what = format!("{} to be {state}", self.node(i).name);
        self.wait(&what, Duration::from_secs(8), || async move {
            let m = self.machine(i).await;
            (m.state == state).then_some(m)
        })
        .await
    }

    async fn wait_outcome(&self, generation: i64) -> BootstrapRecord {
        let what = format!("an outcome for generation {generation}");
        self.wait(&what, Duration::from_secs(10), || async move {
            self.record(generation)
                .await
                .filter(|r| r.outcome.is_some())
        })
        .await
    }

    async fn wait_event(&self, i: usize, kind: EventKind) -> Vec<Event> {
        let what = format!("a {kind} event of {}", self.node(i).name);
        self.wait(&what, Duration::from_secs(8), || async move {
            let events = self.events(i).await;
            events.iter().any(|e| e.kind == kind).then_some(events)
        })
        .await
    }

    /// Every control plane boots and reports in; the first bootstrap goes to cp1.
    async fn bootstrap_cluster(&self) {
        for i in [CP1, CP2, CP3] {
            self.fetch_config(i).await;
        }
        let record = self.wait_outcome(1).await;
        assert_eq!(
            record.outcome.map(|o| o.as_str()),
            Some("bootstrapped"),
            "{record:?}"
        );
        assert_eq!(record.target_mac, self.node(CP1).mac);
        // The other control planes' etcd joins the new cluster, as Talos's does.
        self.node(CP2).double.set_etcd(EtcdChange::Member).unwrap();
        self.node(CP3).double.set_etcd(EtcdChange::Member).unwrap();
        assert_eq!(self.lab.member_names(), ["cp1", "cp2", "cp3"]);
    }

    /// Runs the real `bootplane` CLI on this world's database.
    pub(crate) async fn cli(&self, args: &[&str]) -> String {
        let out = tokio::process::Command::new(kit::BIN)
            .args(args)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "bootplane {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Machines, their events, every RPC each double received, etcd members, bootstraps.
    pub(crate) async fn dump(&self) -> String {
        let mut s = String::new();
        for n in &self.lab.nodes {
            let m = self.db.get_machine(n.mac).await.ok().flatten();
            let _ = writeln!(
                s,
                "== {} {} {}: {}",
                n.name,
                n.ip,
                n.mac,
                m.map(|m| format!(
                    "state {} installed {} handoff_at {:?}",
                    m.state, m.installed, m.handoff_at
                ))
                .unwrap_or_else(|| "no machine".into())
            );
            let calls: Vec<String> = n
                .double
                .calls()
                .iter()
                .map(|c| format!("{}@{}={}", c.method, c.at_ms, c.code))
                .collect();
            let _ = writeln!(s, "   calls: {}", calls.join(" "));
            for e in self.db.events(n.mac, 100).await.unwrap_or_default() {
                let _ = writeln!(s, "   {} {:<20} {}", e.at, e.kind.as_str(), e.detail);
            }
        }
        let _ = writeln!(s, "== etcd: {:?}", self.lab.store.load());
        let _ = writeln!(
            s,
            "== cluster: {:?}",
            self.db.get_cluster(Some(CLUSTER)).await
        );
        let _ = writeln!(
            s,
            "== bootstraps: {:#?}",
            self.db.bootstrap_history(CLUSTER).await
        );
        s
    }

    async fn stop(mut self) {
        for n in &self.lab.nodes {
            n.stop().await;
        }
        if let Some(app) = self.app.take() {
            app.stop().await;
        }
    }
}

/// Index of the first event matching `pred`, or a failure listing them all.
fn position(events: &[Event], what: &str, pred: impl Fn(&Event) -> bool) -> usize {
    events
        .iter()
        .position(pred)
        .unwrap_or_else(|| panic!("no {what} event in {events:#?}"))
}

pub(crate) fn is_install_script(body: &str) -> bool {
    body.contains("\nkernel ") && body.contains("talos.config=")
}

fn is_disk_handoff(body: &str) -> bool {
    body.contains("\nexit\n") && !body.contains("kernel")
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstraps_once_when_three_of_three_report_in() {
    let w = World::start(41, |_| {}).await;
    // Boot order differs from address order: the target is the lowest address, neither the
    // first nor the last control plane to report in.
    for i in [CP2, CP1] {
        w.fetch_config(i).await;
    }
    for i in [CP2, CP1] {
        w.wait_state(i, Lifecycle::Ready).await;
    }
    assert!(w.lab.calls_of("Bootstrap").is_empty());
    assert!(w.record(1).await.is_none(), "{}", w.dump().await);

    let last_fetch = kit::now_ms();
    w.fetch_config(CP3).await;
    let (node, call) = w
        .wait("the Bootstrap call", Duration::from_secs(10), || async {
            w.lab.calls_of("Bootstrap").into_iter().next()
        })
        .await;
    let events = w.wait_event(CP3, EventKind::ReportedIn).await;
    let reported_at = events
        .iter()
        .find(|e| e.kind == EventKind::ReportedIn)
        .unwrap()
        .at;
    let from_report = call.at_ms - reported_at;
    let from_fetch = call.at_ms - last_fetch;
    println!(
        "report-in -> Bootstrap: {from_report} ms after the third control plane reported in, \
         {from_fetch} ms after it fetched its config"
    );
    assert_eq!(node, "cp1", "Bootstrap went to the lowest address");
    assert_eq!(call.code, "Ok");
    assert!(
        from_report < 2000,
        "Bootstrap {from_report} ms after the last report-in (target < 2 s)"
    );
    assert!(
        from_fetch < 5000,
        "Bootstrap {from_fetch} ms after the last config fetch"
    );

    let record = w.wait_outcome(1).await;
    assert_eq!(
        record.outcome.map(|o| o.as_str()),
        Some("bootstrapped"),
        "{record:?}"
    );
    assert_eq!(record.target_mac, w.node(CP1).mac);
    assert_eq!(record.target_ip, w.node(CP1).ip);
    assert_eq!(record.calls, 1);
    assert!(record.decided_at <= call.at_ms, "{record:?} {call:?}");

    // Re-evaluations (signals and the periodic tick) never call again.
    tokio::time::sleep(tick_and_a_bit()).await;
    let calls = w.lab.calls_of("Bootstrap");
    assert_eq!(calls.len(), 1, "{calls:#?}\n{}", w.dump().await);

    let out = w.cli(&["cluster", "bootstrap", "--json"]).await;
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["cluster"], CLUSTER, "{out}");
    assert_eq!(json["generation"], 1, "{out}");
    assert!(json["bootstrapped_at"].is_i64(), "{out}");
    let history = json["history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "{out}");
    assert_eq!(history[0]["outcome"], "bootstrapped", "{out}");
    assert_eq!(
        history[0]["target_mac"],
        w.node(CP1).mac.to_string(),
        "{out}"
    );
    assert_eq!(history[0]["calls"], 1, "{out}");

    // Every control plane's path to ready is in its event log, in time order (the order the
    // log lists them in is pinned by event_log_lists_a_machines_path_in_the_order_it_happened).
    for i in [CP1, CP2, CP3] {
        let m = w.machine(i).await;
        assert_eq!(m.state, Lifecycle::Ready, "{}", w.dump().await);
        assert!(m.installed);
        let events = w.events(i).await;
        let fetched = position(&events, "config-fetched", |e| {
            e.kind == EventKind::ConfigFetched && e.detail.starts_with("served")
        });
        let served = position(&events, "-> config-served", |e| {
            e.kind == EventKind::State && e.detail.contains("-> config-served")
        });
        let reported = position(&events, "reported-in", |e| e.kind == EventKind::ReportedIn);
        let ready = position(&events, "-> ready", |e| {
            e.kind == EventKind::State && e.detail.starts_with("config-served -> ready")
        });
        assert!(
            events[fetched].at <= events[served].at && served < reported && reported < ready,
            "{events:#?}"
        );
        assert!(
            events[reported].detail.contains(&w.node(i).ip.to_string()),
            "{events:#?}"
        );
    }
    let cp1_events = w.events(CP1).await;
    assert!(
        cp1_events
            .iter()
            .any(|e| e.kind == EventKind::Bootstrap && e.detail.contains("etcd started")),
        "{cp1_events:#?}"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_bootstraps_with_two_of_three() {
    let w = World::start(42, |_| {}).await;
    // cp3's Talos API answers, but the machine never booted bootplane's config: it has not
    // reported in and does not count.
    for i in [CP1, CP2] {
        w.fetch_config(i).await;
    }
    for i in [CP1, CP2] {
        w.wait_state(i, Lifecycle::Ready).await;
    }
    tokio::time::sleep(tick_and_a_bit()).await;
    let calls = w.lab.calls_of("Bootstrap");
    assert!(calls.is_empty(), "{calls:#?}\n{}", w.dump().await);
    assert!(w.record(1).await.is_none(), "{}", w.dump().await);
    assert_eq!(w.machine(CP3).await.state, Lifecycle::Assigned);
    assert!(
        w.node(CP3).double.calls().is_empty(),
        "a machine that never fetched its config is not probed: {:#?}",
        w.node(CP3).double.calls()
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn already_exists_counts_as_done() {
    let w = World::start(43, |_| {}).await;
    // cp1 (the target) has a non-empty etcd data directory but no member list to show:
    // the orchestrator sees no running cluster, and Bootstrap answers AlreadyExists.
    w.node(CP1)
        .double
        .set_etcd(EtcdChange::Bootstrapped)
        .unwrap();
    w.node(CP1).double.set_members(Vec::new()).unwrap();
    for i in [CP3, CP2, CP1] {
        w.fetch_config(i).await;
    }
    let record = w.wait_outcome(1).await;
    assert_eq!(
        record.outcome.map(|o| o.as_str()),
        Some("already-bootstrapped"),
        "{record:?}\n{}",
        w.dump().await
    );
    assert_eq!(record.target_mac, w.node(CP1).mac);
    let cluster = w.db.get_cluster(Some(CLUSTER)).await.unwrap().unwrap();
    assert!(cluster.bootstrapped_at.is_some(), "{cluster:?}");

    tokio::time::sleep(tick_and_a_bit()).await;
    let calls = w.lab.calls_of("Bootstrap");
    assert_eq!(calls.len(), 1, "{calls:#?}\n{}", w.dump().await);
    assert_eq!(calls[0].0, "cp1");
    assert_eq!(calls[0].1.code, "AlreadyExists");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopts_a_cluster_whose_etcd_already_runs() {
    let w = World::start(44, |_| {}).await;
    // etcd already runs on cp2 and cp3 (bootstrapped before bootplane knew them); cp1, the
    // would-be target, has none.
    w.node(CP2)
        .double
        .set_etcd(EtcdChange::Bootstrapped)
        .unwrap();
    w.node(CP3).double.set_etcd(EtcdChange::Member).unwrap();
    for i in [CP1, CP2, CP3] {
        w.fetch_config(i).await;
    }
    let record = w.wait_outcome(1).await;
    assert_eq!(
        record.outcome.map(|o| o.as_str()),
        Some("adopted"),
        "{record:?}\n{}",
        w.dump().await
    );
    assert_eq!(record.calls, 0, "{record:?}");
    assert!(record.called_at.is_none(), "{record:?}");

    tokio::time::sleep(tick_and_a_bit()).await;
    let calls = w.lab.calls_of("Bootstrap");
    assert!(calls.is_empty(), "{calls:#?}\n{}", w.dump().await);
    w.stop().await;
}

// ---- the real binary, killed between marking the call and making it --------------------------

/// A `bootplane serve` process on loopback.
pub(crate) struct Serve {
    pub(crate) child: tokio::process::Child,
    log: PathBuf,
    /// Held while the process runs: heavy tests wait for it (`kit::turns`).
    _turn: kit::turns::Shared,
}

impl Serve {
    /// Starts `bootplane serve` and waits until /healthz answers.
    pub(crate) async fn start(
        w: &World,
        dirs: &Path,
        http_port: u16,
        extra: &[&str],
        crash: bool,
    ) -> Serve {
        assert_eq!(w.data_dir, dirs.join("data"));
        let n = std::fs::read_dir(dirs)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("serve-"))
            })
            .count();
        let log = dirs.join(format!("serve-{n}.log"));
        let mut cmd = kit::served::serve_without_dhcp(dirs, http_port);
        cmd.args(["--talos-api-port", &w.lab.port.to_string()])
            .args(["--config-access", "any", "--talos-version", VERSION])
            .args(extra)
            .env_remove("BOOTPLANE_TEST_CRASH_BEFORE_BOOTSTRAP_CALL")
            .env("BOOTPLANE_LOG", "info,bootplane=debug,sqlx=warn")
            .stderr(std::fs::File::create(&log).unwrap());
        if crash {
            cmd.env("BOOTPLANE_TEST_CRASH_BEFORE_BOOTSTRAP_CALL", "1");
        }
        let mut serve = Serve {
            _turn: kit::turns::shared_async().await,
            child: cmd.spawn().unwrap(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = serve.child.try_wait().unwrap() {
                panic!("bootplane serve exited ({status}):\n{}", serve.log_text());
            }
            if let Ok(r) = w.http.get(format!("{}/healthz", w.base)).send().await {
                if r.status().is_success() {
                    return serve;
                }
            }
            assert!(
                Instant::now() < deadline,
                "/healthz never answered:\n{}",
                serve.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!(
                "bootplane serve still running after {limit:?}:\n{}",
                self.log_text()
            ),
        }
    }

    /// SIGTERM to this process (by its id), then waits for it to end.
    async fn terminate(mut self) {
        let pid = i32::try_from(self.child.id().unwrap()).unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = self.wait_exit(Duration::from_secs(10)).await;
        assert!(status.success(), "{status}:\n{}", self.log_text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_marking_and_calling_never_bootstraps_twice() {
    let dirs = tempfile::tempdir().unwrap();
    let (w, http_port) = World::for_binary(Lab::new(45), dirs.path()).await;

    // Run 1, with the hook: the process exits right after marking the Bootstrap call.
    let mut serve = Serve::start(&w, dirs.path(), http_port, &[], true).await;
    for i in [CP3, CP1, CP2] {
        w.fetch_config(i).await;
    }
    let status = serve.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(86), "{status}:\n{}", serve.log_text());
    let calls = w.lab.calls_of("Bootstrap");
    assert!(calls.is_empty(), "{calls:#?}\n{}", w.dump().await);
    let marked = w.record(1).await.expect("no bootstrap decision stored");
    assert_eq!(marked.target_mac, w.node(CP1).mac, "{marked:?}");
    assert_eq!(marked.target_ip, w.node(CP1).ip);
    assert_eq!(marked.calls, 1, "{marked:?}");
    assert!(marked.called_at.is_some(), "{marked:?}");
    assert!(marked.outcome.is_none(), "{marked:?}");

    // Run 2, default hold-off (300 s): the call may have gone out, so none follows. The
    // orchestrator checks the target's etcd (evidence it re-evaluated) and holds off.
    let restarted = kit::now_ms();
    let serve = Serve::start(&w, dirs.path(), http_port, &[], false).await;
    w.wait(
        "a re-evaluation after the restart (EtcdMemberList on the target)",
        Duration::from_secs(12),
        || async {
            w.node(CP1)
                .double
                .calls_of("EtcdMemberList")
                .into_iter()
                .find(|c| c.at_ms > restarted)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let calls = w.lab.calls_of("Bootstrap");
    assert!(
        calls.is_empty(),
        "{calls:#?}\n{}\n{}",
        w.dump().await,
        serve.log_text()
    );
    let held = w.record(1).await.unwrap();
    assert_eq!(
        held, marked,
        "the stored decision changed during the hold-off"
    );
    serve.terminate().await;

    // Run 3, hold-off 3 s (long past): the call is repeated, to the same target only.
    let serve = Serve::start(
        &w,
        dirs.path(),
        http_port,
        &["--bootstrap-holdoff", "3"],
        false,
    )
    .await;
    let calls = w
        .wait(
            "the Bootstrap call after the hold-off",
            Duration::from_secs(12),
            || async {
                let calls = w.lab.calls_of("Bootstrap");
                (!calls.is_empty()).then_some(calls)
            },
        )
        .await;
    let record = w.wait_outcome(1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = w.lab.calls_of("Bootstrap");
    assert_eq!(all.len(), 1, "{all:#?}\n{}", serve.log_text());
    assert_eq!(calls[0].0, "cp1", "{calls:#?}");
    assert_eq!(calls[0].1.code, "Ok");
    assert_eq!(
        record.outcome.map(|o| o.as_str()),
        Some("bootstrapped"),
        "{record:?}"
    );
    assert_eq!(record.target_mac, marked.target_mac);
    assert_eq!(record.target_ip, marked.target_ip);
    assert_eq!(record.decided_at, marked.decided_at);
    assert_eq!(record.calls, 2, "{record:?}");
    serve.terminate().await;
    w.stop().await;
}

// ---- wipes and rebuilds -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_wiped_control_plane_has_its_stale_member_removed_and_no_bootstrap() {
    let w = World::start(46, |_| {}).await;
    w.bootstrap_cluster().await;
    let stale = w
        .lab
        .store
        .load()
        .unwrap()
        .members
        .into_iter()
        .find(|m| m.hostname == "cp2")
        .unwrap();

    // cp2's disk is wiped: its firmware falls through to the network and its Talos API never
    // answers again. First network boot: disk hand-off; the second within the window: wiped.
    w.node(CP2).stop().await;
    w.node(CP2).double.set_etcd(EtcdChange::Empty).unwrap();
    let first = w.netboot(CP2).await;
    assert!(is_disk_handoff(&first), "{first}");
    let second = w.netboot_until_reinstalled(CP2).await;
    assert!(is_install_script(&second), "{second}");
    let events = w.wait_event(CP2, EventKind::Reinstall).await;
    assert!(
        events
            .iter()
            .any(|e| e.kind == EventKind::Reinstall && e.detail.contains("wiped")),
        "{events:#?}"
    );
    let m = w.machine(CP2).await;
    assert!(!m.installed, "{m:?}");

    // Its stale member is removed through a healthy control plane.
    let (via, removal) = w
        .wait("EtcdRemoveMemberByID", Duration::from_secs(10), || async {
            w.lab.calls_of("EtcdRemoveMemberByID").into_iter().next()
        })
        .await;
    assert!(via == "cp1" || via == "cp3", "removed through {via}");
    assert_eq!(removal.code, "Ok", "{removal:?}");
    assert_eq!(w.lab.member_names(), ["cp1", "cp3"]);
    let events = w.wait_event(CP2, EventKind::EtcdMemberRemoved).await;
    assert!(
        events.iter().any(|e| e.kind == EventKind::EtcdMemberRemoved
            && e.detail.contains(&format!("{:x}", stale.id))),
        "{events:#?}"
    );

    // Reinstalled: Talos fetches its config, then its API answers; it is ready again and its
    // etcd joins (the double refuses while a member with its peer URL is still listed).
    w.fetch_config(CP2).await;
    let port = w.lab.port;
    w.node(CP2).restart(port).await;
    let m = w.wait_state(CP2, Lifecycle::Ready).await;
    assert!(m.installed);
    w.node(CP2).double.set_etcd(EtcdChange::Member).unwrap();
    assert_eq!(w.lab.member_names(), ["cp1", "cp2", "cp3"]);

    // Later evaluations leave the new member alone and never bootstrap again.
    tokio::time::sleep(tick_and_a_bit()).await;
    assert_eq!(
        w.lab.member_names(),
        ["cp1", "cp2", "cp3"],
        "{}",
        w.dump().await
    );
    let bootstraps = w.lab.calls_of("Bootstrap");
    assert_eq!(bootstraps.len(), 1, "{bootstraps:#?}");
    let removals = w.lab.calls_of("EtcdRemoveMemberByID");
    assert_eq!(removals.len(), 1, "{removals:#?}\n{}", w.dump().await);
    let history = w.db.bootstrap_history(CLUSTER).await.unwrap();
    assert_eq!(history.len(), 1, "{history:#?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_control_planes_wiped_bootstraps_the_next_generation_once() {
    // Marked un-installed is not enough: etcd is lost once they are back without it (1 s here).
    let w = World::start(47, |o| o.etcd_lost_confirm = Some(1)).await;
    w.bootstrap_cluster().await;

    let out = w
        .cli(&["cluster", "rebuild", "--yes-destroy-everything"])
        .await;
    assert!(
        out.contains("reinstall at their next network boot"),
        "{out}"
    );
    for i in [CP1, CP2, CP3] {
        let m = w.machine(i).await;
        assert!(!m.installed && m.state == Lifecycle::Booting, "{m:?}");
    }
    // The disks are wiped: etcd is gone everywhere.
    for n in w.lab.cps() {
        n.double.set_etcd(EtcdChange::Empty).unwrap();
    }
    w.node(CP1).double.set_members(Vec::new()).unwrap();

    // Each control plane network-boots into the installer and fetches its config again.
    for i in [CP3, CP1, CP2] {
        let script = w.netboot(i).await;
        assert!(is_install_script(&script), "{script}");
        w.fetch_config(i).await;
    }
    let record = w.wait_outcome(2).await;
    assert_eq!(
        record.outcome.map(|o| o.as_str()),
        Some("bootstrapped"),
        "{record:?}"
    );
    assert_eq!(record.target_mac, w.node(CP1).mac);
    for i in [CP1, CP2, CP3] {
        assert_eq!(w.machine(i).await.state, Lifecycle::Ready);
    }

    tokio::time::sleep(tick_and_a_bit()).await;
    let calls = w.lab.calls_of("Bootstrap");
    assert_eq!(calls.len(), 2, "{calls:#?}\n{}", w.dump().await);
    assert!(
        calls.iter().all(|(n, c)| *n == "cp1" && c.code == "Ok"),
        "{calls:#?}"
    );
    let cluster = w.db.get_cluster(Some(CLUSTER)).await.unwrap().unwrap();
    assert_eq!(cluster.generation, 2, "{cluster:?}");
    assert!(w.record(3).await.is_none());

    let out = w.cli(&["cluster", "bootstrap", "--json"]).await;
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["generation"], 2, "{out}");
    let history = json["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{out}");
    for (n, h) in history.iter().enumerate() {
        assert_eq!(h["generation"], n + 1, "{out}");
        assert_eq!(h["outcome"], "bootstrapped", "{out}");
        assert_eq!(h["calls"], 1, "{out}");
    }
    let events = w.events(CP1).await;
    assert!(
        events.iter().any(|e| e.kind == EventKind::Bootstrap
            && e.detail
                .contains("all control planes wiped: cluster generation 2")),
        "{events:#?}"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_worker_is_reinstalled_without_etcd_calls() {
    let w = World::start(48, |_| {}).await;
    // A running cluster whose etcd bootplane adopts: no Bootstrap ever reaches a node here.
    w.node(CP1)
        .double
        .set_etcd(EtcdChange::Bootstrapped)
        .unwrap();
    w.node(CP2).double.set_etcd(EtcdChange::Member).unwrap();
    w.node(CP3).double.set_etcd(EtcdChange::Member).unwrap();
    for i in [CP1, CP2, CP3, W1] {
        w.fetch_config(i).await;
    }
    let record = w.wait_outcome(1).await;
    assert_eq!(
        record.outcome.map(|o| o.as_str()),
        Some("adopted"),
        "{record:?}"
    );
    w.wait_state(W1, Lifecycle::Ready).await;

    // The worker's disk is wiped: two network boots within the window.
    w.node(W1).stop().await;
    let first = w.netboot(W1).await;
    assert!(is_disk_handoff(&first), "{first}");
    let second = w.netboot_until_reinstalled(W1).await;
    assert!(second.contains("as worker w1"), "{second}");
    let events = w.wait_event(W1, EventKind::Reinstall).await;
    assert!(
        events
            .iter()
            .any(|e| e.kind == EventKind::Reinstall && e.detail.contains("wiped")),
        "{events:#?}"
    );
    let m = w.machine(W1).await;
    assert!(!m.installed && m.state == Lifecycle::Booting, "{m:?}");

    // It installs again and reports in.
    w.fetch_config(W1).await;
    let port = w.lab.port;
    w.node(W1).restart(port).await;
    w.wait_state(W1, Lifecycle::Ready).await;

    tokio::time::sleep(tick_and_a_bit()).await;
    for method in ["Bootstrap", "EtcdRemoveMemberByID"] {
        let calls = w.lab.calls_of(method);
        assert!(calls.is_empty(), "{calls:#?}\n{}", w.dump().await);
    }
    assert_eq!(w.lab.member_names(), ["cp1", "cp2", "cp3"]);
    let events = w.events(W1).await;
    assert!(
        !events
            .iter()
            .any(|e| e.kind == EventKind::EtcdMemberRemoved),
        "{events:#?}"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installed_machine_booting_from_network_first_gets_its_disk() {
    let w = World::start(49, |_| {}).await;
    w.fetch_config(W1).await;
    w.wait_state(W1, Lifecycle::Ready).await;

    // Its firmware boots the network first, every time: each boot is a hand-off, because its
    // Talos API answers in between.
    for boot in 1..=3 {
        let script = w.netboot(W1).await;
        assert!(is_disk_handoff(&script), "boot {boot}: {script}");
        let what = format!("report-in {} (after hand-off {boot})", boot + 1);
        w.wait(&what, Duration::from_secs(8), || async {
            let events = w.events(W1).await;
            let n = events
                .iter()
                .filter(|e| e.kind == EventKind::ReportedIn)
                .count();
            let m = w.machine(W1).await;
            (n == boot + 1 && m.handoff_at.is_none()).then_some(())
        })
        .await;
        let m = w.machine(W1).await;
        assert!(m.installed && m.state == Lifecycle::Ready, "{m:?}");
    }
    // A served script's event is written by the recorder a moment after the response; the
    // report-in that follows it can be stored first.
    let handoffs = |events: &[Event]| {
        events
            .iter()
            .filter(|e| {
                e.kind == EventKind::ScriptServed && e.detail == "installed: disk hand-off exit"
            })
            .count()
    };
    let events = w
        .wait(
            "the third hand-off's event",
            Duration::from_secs(5),
            || async {
                let events = w.events(W1).await;
                (handoffs(&events) >= 3).then_some(events)
            },
        )
        .await;
    assert_eq!(handoffs(&events), 3, "{events:#?}");
    assert!(
        !events.iter().any(|e| e.kind == EventKind::Reinstall),
        "{events:#?}"
    );
    w.stop().await;
}

/// Talos 1.12+ leaves the UEFI boot order alone, so a PXE-first machine network-boots at every
/// reboot. A healthy control plane rebooted ten times in a row, for many times `wipe_confirm`
/// (1 s here) in all, is handed to its disk at every boot and never reinstalled, also after the
/// disk boots that keep its Talos API silent for longer than `wipe_confirm` (as Talos's own boot
/// does). A worker whose disk is wiped during the same run is still reinstalled once, when its
/// API has been silent for `wipe_confirm` since its hand-off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_network_boots_at_every_reboot_keeps_its_disk_while_a_wiped_one_is_reinstalled()
{
    const REBOOTS: usize = 10;
    /// How long Talos stays up between reboots (hours in life): longer than the probe interval
    /// of a hand-off (1 s), shorter than any backed-off probe.
    const UP: Duration = Duration::from_millis(1500);
    let wipe_confirm = Duration::from_secs(1);
    let w = World::start(60, |o| o.wipe_confirm = Some(1)).await;
    w.bootstrap_cluster().await;
    w.fetch_config(W1).await;
    w.wait_state(W1, Lifecycle::Ready).await;
    let port = w.lab.port;

    let rebooting = async {
        let started = Instant::now();
        for boot in 1..=REBOOTS {
            // A reboot: Talos stops answering and the firmware boots the network first.
            w.node(CP2).stop().await;
            let script = w.netboot(CP2).await;
            assert!(
                is_disk_handoff(&script),
                "reboot {boot} of cp2 after {:?}: {script}\n{}",
                started.elapsed(),
                w.dump().await
            );
            // Talos boots from its disk: quickly, or (every third boot) in 2 s, long enough
            // for the probes to fail more than WIPE_MIN_FAILED_PROBES times over more than
            // `wipe_confirm`.
            let disk_boot = if boot % 3 == 1 {
                Duration::from_secs(2)
            } else {
                Duration::from_millis(300)
            };
            tokio::time::sleep(disk_boot).await;
            w.node(CP2).restart(port).await;
            tokio::time::sleep(UP).await;
        }
        started.elapsed()
    };
    let wiped = async {
        // The worker's disk is wiped: its API is gone, it comes back to the network each time
        // it is handed to its disk.
        w.node(W1).stop().await;
        let first_boot = Instant::now();
        let script = w.netboot_until_reinstalled(W1).await;
        (script, first_boot.elapsed())
    };
    let (rebooted_for, (install, silent_for)) = tokio::join!(rebooting, wiped);
    println!(
        "cp2 rebooted {REBOOTS} times in {rebooted_for:?}; w1 reinstalled {silent_for:?} after \
         its first network boot"
    );
    assert!(rebooted_for > 10 * wipe_confirm, "{rebooted_for:?}");
    assert!(install.contains("as worker w1"), "{install}");
    assert!(
        silent_for >= wipe_confirm,
        "w1 reinstalled {silent_for:?} after its hand-off\n{}",
        w.dump().await
    );

    // cp2: up, installed, handed to its disk at every reboot, never marked for reinstall.
    let events = w
        .wait(
            "cp2 ready after its last reboot, with every hand-off logged",
            Duration::from_secs(8),
            || async {
                let m = w.machine(CP2).await;
                let events = w.events(CP2).await;
                let handoffs = events
                    .iter()
                    .filter(|e| {
                        e.kind == EventKind::ScriptServed
                            && e.detail == "installed: disk hand-off exit"
                    })
                    .count();
                (m.state == Lifecycle::Ready && m.handoff_at.is_none() && handoffs == REBOOTS)
                    .then_some(events)
            },
        )
        .await;
    assert!(
        !events.iter().any(|e| e.kind == EventKind::Reinstall),
        "{events:#?}"
    );

    // w1: reinstalled once, for its wiped disk; it installs and reports in again.
    let events = w.events(W1).await;
    let reinstalls: Vec<&Event> = events
        .iter()
        .filter(|e| e.kind == EventKind::Reinstall)
        .collect();
    assert!(
        reinstalls.len() == 1 && reinstalls[0].detail.contains("wiped"),
        "{events:#?}"
    );
    w.fetch_config(W1).await;
    w.node(W1).restart(port).await;
    let m = w.wait_state(W1, Lifecycle::Ready).await;
    assert!(m.installed, "{m:?}");
    // Every control plane installed and never marked, etcd as it was, one Bootstrap.
    assert_cluster_untouched(&w, "after ten reboots of cp2 and w1's reinstall").await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_boot_after_the_wipe_window_is_a_handoff_again() {
    let w = World::start(50, |o| o.wipe_window = Some(1)).await;
    w.fetch_config(W1).await;
    w.wait_state(W1, Lifecycle::Ready).await;
    // Powered off after a hand-off; it network-boots again only after the window.
    w.node(W1).stop().await;
    let first = w.netboot(W1).await;
    assert!(is_disk_handoff(&first), "{first}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = w.netboot(W1).await;
    assert!(is_disk_handoff(&second), "{second}\n{}", w.dump().await);
    let m = w.machine(W1).await;
    assert!(m.installed, "{m:?}");
    let events = w.events(W1).await;
    assert!(
        !events.iter().any(|e| e.kind == EventKind::Reinstall),
        "{events:#?}"
    );
    w.stop().await;
}

// ---- Found while writing the above. The tests named for a behaviour bootplane lacks fail
// ---- until it is fixed; the two guards among them pass and keep those fixes honest. --------

/// A Bootstrap call whose answer never comes may have started etcd: its outcome is unknown,
/// so the hold-off applies and no second call follows within it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_call_without_an_answer_is_not_repeated_within_the_holdoff() {
    // The doubles run apart: this test blocks cp1's Bootstrap handler.
    let side = SideRuntime::new();
    let w = World::start_on(Lab::new_on(51, side.handle.clone()), |_| {}).await;

    // Hold the shared etcd store: cp1's Bootstrap blocks right where it starts etcd, and its
    // answer comes only after bootplane's call timeout.
    let (locked_tx, locked) = std::sync::mpsc::channel::<()>();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let store = w.lab.store.clone();
    let holder = std::thread::spawn(move || {
        let EtcdStore::Memory(cell) = &store else {
            unreachable!("the lab's store is in memory")
        };
        let _guard = cell.lock().unwrap();
        locked_tx.send(()).unwrap();
        let _ = released.recv();
    });
    locked.recv().unwrap();

    for i in [CP1, CP2, CP3] {
        w.fetch_config(i).await;
    }
    // cp1's call log and the store are behind the blocked handler: watch the database only
    // (and fail without the usual dump, which would wait for them).
    let deadline = Instant::now() + Duration::from_secs(10);
    let called_at = loop {
        if let Some(at) = w.record(1).await.and_then(|r| r.called_at) {
            break at;
        }
        if Instant::now() > deadline {
            let _ = release.send(());
            panic!("the Bootstrap call was never marked");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let gave_up =
        called_at + i64::try_from(bootplane::talos::api::CALL_TIMEOUT.as_millis()).unwrap() + 1000;
    tokio::time::sleep(Duration::from_millis(
        u64::try_from(gave_up - kit::now_ms()).unwrap_or(0),
    ))
    .await;
    // The node finishes: etcd now runs on cp1, but bootplane never heard the answer.
    release.send(()).unwrap();
    holder.join().unwrap();
    w.wait("cp1's etcd to run", Duration::from_secs(5), || async {
        (w.lab.member_names() == ["cp1"]).then_some(())
    })
    .await;

    // The hold-off is 300 s: the next evaluations must not call again.
    tokio::time::sleep(tick_and_a_bit()).await;
    let calls = w.lab.calls_of("Bootstrap");
    assert_eq!(
        calls.len(),
        1,
        "a second Bootstrap {} ms after the first one, whose outcome was unknown: {calls:#?}\n{}",
        calls.last().unwrap().1.at_ms - called_at,
        w.dump().await
    );
    w.stop().await;
    drop(side);
}

/// Talos refuses Bootstrap while the node is still booting (FailedPrecondition "bootstrap is
/// not available yet"): nothing started, so the same node is asked again, and no other node
/// ever is (guards a fix of the test above: definite refusals are still retried).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_refused_while_the_target_boots_is_retried_on_the_same_node() {
    let w = World::start(56, |_| {}).await;
    w.node(CP1).double.set_phase(&PhaseChange {
        phase: Phase::Booting,
        ready_after_secs: Some(2.0),
    });
    for i in [CP1, CP2, CP3] {
        w.fetch_config(i).await;
    }
    let record = w.wait_outcome(1).await;
    assert_eq!(
        record.outcome.map(|o| o.as_str()),
        Some("bootstrapped"),
        "{record:?}"
    );
    assert_eq!(record.target_mac, w.node(CP1).mac);
    let calls = w.lab.calls_of("Bootstrap");
    let (last, refused) = calls.split_last().unwrap();
    assert!(!refused.is_empty(), "{calls:#?}");
    assert!(
        refused.iter().all(|(n, c)| *n == "cp1"
            && c.code == "FailedPrecondition"
            && c.message == "bootstrap is not available yet"),
        "{calls:#?}"
    );
    assert_eq!((last.0, last.1.code.as_str()), ("cp1", "Ok"), "{calls:#?}");
    assert_eq!(
        record.calls,
        i64::try_from(calls.len()).unwrap(),
        "{record:?}"
    );
    w.stop().await;
}

/// Every control plane is wiped at once (re-imaged), but their firmware brings them back at
/// different times: two are reinstalled and report in before the third is seen wiped. etcd
/// is gone all the same, so the next generation must be bootstrapped, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_planes_wiped_together_but_back_one_after_another_bootstrap_the_next_generation() {
    let w = World::start(52, |o| o.etcd_lost_confirm = Some(2)).await;
    w.bootstrap_cluster().await;
    let port = w.lab.port;
    for i in [CP1, CP2, CP3] {
        w.node(i).stop().await;
        w.node(i).double.set_etcd(EtcdChange::Empty).unwrap();
    }
    w.node(CP1).double.set_members(Vec::new()).unwrap();

    for i in [CP1, CP2, CP3] {
        let first = w.netboot(i).await;
        assert!(is_disk_handoff(&first), "{first}");
        w.netboot_until_reinstalled(i).await;
        w.fetch_config(i).await;
        w.node(i).restart(port).await;
        w.wait_state(i, Lifecycle::Ready).await;
    }
    let record = w.wait_outcome(2).await;
    assert_eq!(
        record.outcome.map(|o| o.as_str()),
        Some("bootstrapped"),
        "{record:?}"
    );
    let calls = w.lab.calls_of("Bootstrap");
    assert_eq!(calls.len(), 2, "{calls:#?}\n{}", w.dump().await);
    w.stop().await;
}

/// Two control planes are wiped and come back without etcd while the third is only down (its
/// disk, and etcd's data, intact): etcd is not lost, and no second Bootstrap may happen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_control_planes_wiped_and_the_third_unreachable_is_not_a_lost_etcd() {
    let w = World::start(55, |o| o.etcd_lost_confirm = Some(1)).await;
    w.bootstrap_cluster().await;
    let port = w.lab.port;
    for i in [CP1, CP2, CP3] {
        w.node(i).stop().await;
    }
    for i in [CP1, CP2] {
        w.node(i).double.set_etcd(EtcdChange::Empty).unwrap();
        assert!(is_disk_handoff(&w.netboot(i).await));
        w.netboot_until_reinstalled(i).await;
        w.fetch_config(i).await;
        w.node(i).restart(port).await;
        w.wait_state(i, Lifecycle::Ready).await;
    }
    tokio::time::sleep(tick_and_a_bit() * 2).await;
    let calls = w.lab.calls_of("Bootstrap");
    assert_eq!(calls.len(), 1, "{calls:#?}\n{}", w.dump().await);
    let cluster = w.db.get_cluster(Some(CLUSTER)).await.unwrap().unwrap();
    assert_eq!(cluster.generation, 1, "{}", w.dump().await);
    w.stop().await;
}

/// The operator reinstalls the control planes one at a time, each rejoining etcd before the
/// next goes: etcd never stops, every control plane was reinstalled since the bootstrap, and
/// still no Bootstrap is called again (guards a fix of the test above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_reinstall_of_every_control_plane_keeps_etcd_and_never_bootstraps_again() {
    let w = World::start(53, |_| {}).await;
    w.bootstrap_cluster().await;
    let port = w.lab.port;
    for (n, i) in [CP1, CP2, CP3].into_iter().enumerate() {
        let name = w.node(i).name;
        w.node(i).stop().await;
        w.node(i).double.set_etcd(EtcdChange::Empty).unwrap();
        assert!(is_disk_handoff(&w.netboot(i).await));
        w.netboot_until_reinstalled(i).await;
        let what = format!("{name}'s stale member removed");
        w.wait(&what, Duration::from_secs(10), || async {
            (w.lab.calls_of("EtcdRemoveMemberByID").len() == n + 1
                && !w.lab.member_names().iter().any(|m| m == name))
            .then_some(())
        })
        .await;
        w.fetch_config(i).await;
        w.node(i).restart(port).await;
        w.wait_state(i, Lifecycle::Ready).await;
        w.node(i).double.set_etcd(EtcdChange::Member).unwrap();
        assert_eq!(w.lab.member_names(), ["cp1", "cp2", "cp3"]);
    }
    tokio::time::sleep(tick_and_a_bit()).await;
    let calls = w.lab.calls_of("Bootstrap");
    assert_eq!(calls.len(), 1, "{calls:#?}\n{}", w.dump().await);
    assert_eq!(w.lab.member_names(), ["cp1", "cp2", "cp3"]);
    assert_eq!(w.lab.calls_of("EtcdRemoveMemberByID").len(), 3);
    w.stop().await;
}

/// A machine handed to its disk boots from it and its Talos API answers for seconds, but the
/// hand-off probe has backed off and does not look during that time; the node then reboots
/// (network first). Its disk booted: this is a hand-off, not a wipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_boot_missed_by_a_backed_off_probe_is_not_taken_for_a_wipe() {
    let w = World::start(54, |_| {}).await;
    w.fetch_config(W1).await;
    w.wait_state(W1, Lifecycle::Ready).await;
    let port = w.lab.port;

    // Reboot, network first: hand-off; Talos takes 9 s to come up from the disk.
    w.node(W1).stop().await;
    let handed_off = Instant::now();
    assert!(is_disk_handoff(&w.netboot(W1).await));
    tokio::time::sleep_until((handed_off + Duration::from_secs(9)).into()).await;
    w.node(W1).restart(port).await;
    // Up and answering for 4 s, then rebooted again (an upgrade, an operator's reboot).
    tokio::time::sleep_until((handed_off + Duration::from_secs(13)).into()).await;
    let answered: Vec<CallRecord> = w.node(W1).double.calls_of("Version");
    let script = w.netboot(W1).await;
    assert!(
        is_disk_handoff(&script),
        "a node whose disk booted (its API answered from {:?} after the hand-off) was \
         reinstalled; Version calls it received meanwhile: {answered:#?}\n{}",
        Duration::from_secs(9),
        w.dump().await
    );
    w.stop().await;
}

/// `machines events` lists a machine's path to ready in the order it happened: the config
/// was fetched, so the machine became config-served, then it reported in and became ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_log_lists_a_machines_path_in_the_order_it_happened() {
    let w = World::start(51, |_| {}).await;
    w.fetch_config(W1).await;
    w.wait_state(W1, Lifecycle::Ready).await;
    w.wait_event(W1, EventKind::ConfigFetched).await;
    let mac = w.node(W1).mac.to_string();
    let out = w
        .cli(&["machines", "events", "--mac", &mac, "--json"])
        .await;
    let events: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let path: Vec<String> = events
        .iter()
        .map(|e| {
            let kind = e["kind"].as_str().unwrap();
            let detail = e["detail"].as_str().unwrap();
            match kind {
                "state" => format!("state {}", detail.split(':').next().unwrap()),
                _ => kind.to_string(),
            }
        })
        .filter(|k| k != "changed")
        .collect();
    assert_eq!(
        path,
        [
            "state discovered -> assigned",
            "config-fetched",
            "state assigned -> config-served",
            "reported-in",
            "state config-served -> ready",
        ],
        "{out}"
    );
    let at: Vec<i64> = events.iter().map(|e| e["at"].as_i64().unwrap()).collect();
    assert!(
        at.windows(2).all(|p| p[0] <= p[1]),
        "not in time order: {out}"
    );
    w.stop().await;
}

// ---- unauthenticated requests against a healthy cluster (issue: "Trust only evidence") ----

/// Every sign that the cluster was left alone: each control plane still installed and never
/// marked for reinstall, the etcd membership as it was, one Bootstrap and no member removal.
async fn assert_cluster_untouched(w: &World, what: &str) {
    for i in [CP1, CP2, CP3] {
        let m = w.machine(i).await;
        assert!(m.installed, "{what}: {m:?}\n{}", w.dump().await);
        let events = w.events(i).await;
        assert!(
            !events.iter().any(|e| e.kind == EventKind::Reinstall),
            "{what}: {events:#?}"
        );
    }
    assert_eq!(w.lab.member_names(), ["cp1", "cp2", "cp3"], "{what}");
    let removals = w.lab.calls_of("EtcdRemoveMemberByID");
    assert!(removals.is_empty(), "{what}: {removals:#?}");
    assert_eq!(w.lab.calls_of("Bootstrap").len(), 1, "{what}");
    let cluster = w.db.get_cluster(Some(CLUSTER)).await.unwrap().unwrap();
    assert_eq!(cluster.generation, 1, "{what}");
}

/// The attacker's review took etcd from 3 members to 0 with a few pipelined pairs of
/// `GET /machine.ipxe?mac=<installed control plane>`: the second of a pair, inside the wipe
/// window, marked a healthy node wiped, and its member was removed through a peer. Requests
/// are claims: the nodes answer their Talos API, so nothing may happen, however long it goes
/// on (here longer than `wipe_confirm`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_network_boots_never_reinstall_a_healthy_control_plane() {
    let w = World::start(57, |_| {}).await;
    w.bootstrap_cluster().await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        for i in [CP1, CP2, CP3] {
            let (a, b) = tokio::join!(w.netboot(i), w.netboot(i));
            assert!(is_disk_handoff(&a) && is_disk_handoff(&b), "{a}\n{b}");
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    tokio::time::sleep(tick_and_a_bit()).await;
    assert_cluster_untouched(&w, "after 4 s of forged network boots").await;
    w.stop().await;
}

/// An operator's reinstall of a control plane takes its etcd member away, but only once the
/// node no longer runs etcd: while its Talos API still answers with a running etcd, the
/// member is alive and stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_etcd_member_is_never_removed() {
    let w = World::start(58, |_| {}).await;
    w.bootstrap_cluster().await;
    let out = w
        .cli(&[
            "machines",
            "reinstall",
            "--mac",
            &w.node(CP2).mac.to_string(),
        ])
        .await;
    assert!(out.contains("reinstalls"), "{out}");
    tokio::time::sleep(tick_and_a_bit()).await;
    let removals = w.lab.calls_of("EtcdRemoveMemberByID");
    assert!(removals.is_empty(), "{removals:#?}\n{}", w.dump().await);
    assert_eq!(w.lab.member_names(), ["cp1", "cp2", "cp3"]);
    // The node goes down for its reinstall: now its member is stale and goes.
    w.node(CP2).stop().await;
    w.wait("cp2's member removed", Duration::from_secs(15), || async {
        (w.lab.member_names() == ["cp1", "cp3"]).then_some(())
    })
    .await;
    w.stop().await;
}

/// A property over random interleavings of unauthenticated DHCP (full mode), TFTP and HTTP
/// requests naming the machines of a bootstrapped cluster: etcd membership never changes, no
/// machine is marked for reinstall, and `/config` (`--config-access mac`) answers only a
/// requester whose address bootplane's own lease binds to the machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_unauthenticated_requests_never_touch_a_healthy_cluster() {
    use bootplane::config::ConfigAccess;
    use dhcproto::v4::MessageType;
    use rand::{Rng, SeedableRng};

    let w = World::start(59, |o| o.config_access = Some(ConfigAccess::Mac)).await;
    let app = w.app.as_ref().unwrap();
    let (dhcp, tftp) = (app.dhcp.unwrap(), app.tftp);

    // The honest path first: each control plane's DHCP exchange binds its static address to
    // it, and it fetches its config from that address.
    for i in [CP1, CP2, CP3] {
        w.lease(i).await;
        let node = w.node(i);
        let r = w
            .client_of(i)
            .get(format!("{}/config?mac={}", w.base, node.mac))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    }
    let record = w.wait_outcome(1).await;
    assert_eq!(record.outcome.map(|o| o.as_str()), Some("bootstrapped"));
    w.node(CP2).double.set_etcd(EtcdChange::Member).unwrap();
    w.node(CP3).double.set_etcd(EtcdChange::Member).unwrap();
    for i in [CP1, CP2, CP3] {
        w.wait_state(i, Lifecycle::Ready).await;
    }

    let seed: u64 = std::env::var("BOOTPLANE_PROPERTY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (BOOTPLANE_PROPERTY_SEED reruns it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let macs: Vec<Mac> = w.lab.nodes.iter().map(|n| n.mac).collect();
    let addresses: Vec<Ipv4Addr> = w
        .lab
        .nodes
        .iter()
        .map(|n| n.ip)
        .chain([
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::LOCALHOST,
            Ipv4Addr::new(127, 0, 59, 200),
        ])
        .collect();
    // Strangers' addresses: none is any machine's.
    let strangers = [Ipv4Addr::LOCALHOST, Ipv4Addr::new(127, 0, 59, 200)];
    let tftp_sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let kinds = [
        MessageType::Discover,
        MessageType::Request,
        MessageType::Inform,
        MessageType::Release,
        MessageType::Decline,
    ];
    for step in 0..150 {
        let mac = macs[rng.gen_range(0..macs.len())];
        match rng.gen_range(0..6) {
            0 | 1 => {
                let kind = kinds[rng.gen_range(0..kinds.len())];
                let ciaddr = addresses[rng.gen_range(0..addresses.len())];
                let requested = rng
                    .gen_bool(0.5)
                    .then(|| addresses[rng.gen_range(0..addresses.len())]);
                kit::send(dhcp, &kit::pxe_packet(kind, mac.0, ciaddr, requested)).await;
            }
            2 => {
                let mut rrq = vec![0, 1];
                rrq.extend_from_slice(b"ipxe.efi\0octet\0timeout\0");
                rrq.extend_from_slice(b"255\0");
                tftp_sock.send_to(&rrq, tftp).await.unwrap();
            }
            3 => {
                let path = format!("/machine.ipxe?mac={}&arch=x86_64", mac.hyphenated());
                let (a, b) = tokio::join!(w.get(&path), w.get(&path));
                assert!(a.0 == 200 || a.0 == 404, "{a:?}");
                assert!(b.0 == 200 || b.0 == 404, "{b:?}");
            }
            4 => {
                let from = strangers[rng.gen_range(0..strangers.len())];
                let client = reqwest::Client::builder()
                    .local_address(Some(from.into()))
                    .build()
                    .unwrap();
                let r = client
                    .get(format!("{}/config?mac={mac}", w.base))
                    .send()
                    .await
                    .unwrap();
                let code = r.status().as_u16();
                let body = r.text().await.unwrap();
                assert_ne!(
                    code, 200,
                    "step {step}, seed {seed}: {mac}'s config served to {from}: {body}"
                );
            }
            _ => {
                let (code, _) = w
                    .get(&format!("/assets/{VERSION}/vmlinuz-amd64?mac={mac}"))
                    .await;
                assert!(code == 200 || code == 503, "{code}");
            }
        }
        if rng.gen_bool(0.3) {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..400))).await;
        }
        if step % 50 == 49 {
            assert_cluster_untouched(&w, &format!("step {step}, seed {seed}")).await;
        }
    }
    tokio::time::sleep(tick_and_a_bit()).await;
    assert_cluster_untouched(&w, &format!("the end, seed {seed}")).await;
    w.stop().await;
}
