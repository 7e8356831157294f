//! What Talos nodes push to bootplane: events on the event sink (a real tonic client speaking
//! Talos's `events.EventSinkService`, Any-wrapped `machine.*Event` payloads) and kernel logs
//! as JSON lines over TCP. Each "node" talks from its own loopback address (127.0.7x.y), which
//! is how bootplane tells machines apart. Talos API doubles play the node's authenticated API.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::kit::{self, connect_from, Appliance};
use bootplane::cli::{Cli, Command};
use bootplane::config::PortSetting;
use bootplane::model::{BootLogLine, Event, EventKind, Ipv4Cidr, Lifecycle, Mac, Machine, Role};
use bootplane::talos::api::pb::events::event_sink_service_client::EventSinkServiceClient;
use bootplane::talos::api::pb::events::EventRequest;
use bootplane::talos::api::pb::machine as m;
use bootplane::testkit::double::{DoubleConfig, NodeRole, TalosDouble};
use clap::Parser;
use hyper_util::rt::TokioIo;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Channel, Endpoint};

fn node(ip: Ipv4Addr, host: u8) -> Machine {
    let mut m = Machine::discovered(Mac([0x52, 0x54, 0x00, ip.octets()[2], 0x00, host]));
    m.role = Role::Controlplane;
    m.hostname = Some(format!("cp{host}"));
    m.ip = Some(Ipv4Cidr::new(ip, 24).unwrap());
    m
}

/// Initialises the default cluster with the shared bundle (so doubles and bootplane trust
/// the same OS CA) and adds `machines`.
async fn provision(app: &Appliance, net: u8, machines: &[&Machine]) {
    kit::init_lab_cluster(&app.db, None, net, machines).await;
}

/// A gRPC channel to the event sink whose connections come from `from`.
async fn sink_channel(
    from: Ipv4Addr,
    sink: SocketAddr,
) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("http://{sink}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(
            move |_: tonic::codegen::http::Uri| async move {
                connect_from(from, sink).await.map(TokioIo::new)
            },
        ))
        .await
}

fn event<T: Message>(id: u32, name: &str, payload: &T) -> EventRequest {
    EventRequest {
        data: Some(prost_types::Any {
            type_url: format!("type.googleapis.com/machine.{name}"),
            value: payload.encode_to_vec(),
        }),
        id: format!("d2ktest{id:013}"),
        actor_id: String::new(),
    }
}

/// What a node publishes while it boots from disk, up to the machine being ready: a
/// sequence, its phases and tasks, apid coming up, and the status turning ready.
fn boot_events() -> Vec<EventRequest> {
    use m::machine_status_event::{MachineStage, MachineStatus};
    vec![
        event(
            1,
            "SequenceEvent",
            &m::SequenceEvent {
                sequence: "boot".into(),
                action: m::sequence_event::Action::Start as i32,
                error: None,
            },
        ),
        event(
            2,
            "PhaseEvent",
            &m::PhaseEvent {
                phase: "startEverything".into(),
                action: m::phase_event::Action::Start as i32,
            },
        ),
        event(
            3,
            "TaskEvent",
            &m::TaskEvent {
                task: "startAllServices".into(),
                action: m::task_event::Action::Start as i32,
            },
        ),
        event(
            4,
            "ServiceStateEvent",
            &m::ServiceStateEvent {
                service: "apid".into(),
                action: m::service_state_event::Action::Running as i32,
                message: "Health check successful".into(),
            },
        ),
        event(
            5,
            "MachineStatusEvent",
            &m::MachineStatusEvent {
                stage: MachineStage::Running as i32,
                status: Some(MachineStatus {
                    ready: true,
                    unmet_conditions: vec![],
                }),
            },
        ),
    ]
}

/// Publishes `events` one call each, in order, as Talos's sink controller does.
async fn publish(from: Ipv4Addr, sink: SocketAddr, events: Vec<EventRequest>) {
    let channel = sink_channel(from, sink).await.unwrap();
    let mut client = EventSinkServiceClient::new(channel);
    for e in events {
        client.publish(e).await.unwrap();
    }
}

async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn talos_events(events: &[Event]) -> Vec<&str> {
    events
        .iter()
        .filter(|e| e.kind == EventKind::TalosEvent)
        .map(|e| e.detail.as_str())
        .collect()
}

/// A socket bound to the node's Talos API address but not yet listening: probes are refused
/// until `listen`, as when the node is still booting.
fn api_socket(ip: Ipv4Addr) -> (socket2::Socket, u16) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((ip, 0)).into()).unwrap();
    let port = socket.local_addr().unwrap().as_socket().unwrap().port();
    (socket, port)
}

/// Starts a Talos double on the bound socket (the node's API comes up).
fn serve_double(socket: socket2::Socket, name: &str, ip: Ipv4Addr, port: u16) -> TalosDouble {
    socket.listen(128).unwrap();
    socket.set_nonblocking(true).unwrap();
    let listener: std::net::TcpListener = socket.into();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let config = DoubleConfig::new(name, NodeRole::Controlplane, (ip, port).into());
    let double = TalosDouble::new(kit::cached_bundle(), config).unwrap();
    let serving = double.clone();
    tokio::spawn(async move {
        let _ = serving.serve(listener, std::future::pending()).await;
    });
    double
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_script_tells_talos_where_to_send_events_and_kernel_logs() {
    let app = Appliance::start().await;
    app.add_assets(1000, 1000);
    let cp = node(Ipv4Addr::new(127, 0, 70, 11), 11);
    app.db.add_machine(&cp, kit::now_ms()).await.unwrap();
    let script = |app: &Appliance| {
        let url = app.url(&format!(
            "/machine.ipxe?mac={}&arch=x86_64",
            cp.mac.hyphenated()
        ));
        async move { reqwest::get(url).await.unwrap().text().await.unwrap() }
    };
    let body = script(&app).await;
    let (events, kmsg) = (app.events.unwrap(), app.kmsg.unwrap());
    let kernel_line = body.lines().find(|l| l.starts_with("kernel ")).unwrap();
    let args: Vec<&str> = kernel_line.split_whitespace().collect();
    assert!(
        args.contains(&format!("talos.events.sink=127.0.0.1:{}", events.port()).as_str()),
        "{body}"
    );
    assert!(
        args.contains(&format!("talos.logging.kernel=tcp://127.0.0.1:{}", kmsg.port()).as_str()),
        "{body}"
    );
    app.stop().await;

    // Turned off, they are not there (and nothing listens).
    let app = Appliance::start_with(|o| {
        o.events_port = Some(PortSetting::Off);
        o.kernel_log_port = Some(PortSetting::Off);
    })
    .await;
    app.add_assets(1000, 1000);
    app.db.add_machine(&cp, kit::now_ms()).await.unwrap();
    let body = script(&app).await;
    assert!(body.contains("talos.config="), "{body}");
    assert!(!body.contains("talos.events.sink"), "{body}");
    assert!(!body.contains("talos.logging.kernel"), "{body}");
    assert!(app.events.is_none() && app.kmsg.is_none());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_publishing_events_is_probed_at_once_and_turns_ready_long_before_the_backoff() {
    let ip = Ipv4Addr::new(127, 0, 71, 11);
    let (api, port) = api_socket(ip);
    let app = Appliance::start_with(|o| o.talos_api_port = Some(port)).await;
    let cp = node(ip, 11);
    provision(&app, 71, &[&cp]).await;
    // Talos fetches its config: bootplane starts probing the node's API, which refuses.
    let config = reqwest::get(app.url(&format!("/config?mac={}", cp.mac)))
        .await
        .unwrap();
    assert_eq!(config.status(), 200);
    let served = Instant::now();
    // Probes at about 0, 0.25, 0.75, 1.75, 3.75 and 7.75 s, then not before 15.75 s.
    tokio::time::sleep(Duration::from_millis(8_500)).await;
    let m = app.db.get_machine(cp.mac).await.unwrap().unwrap();
    assert_eq!(m.state, Lifecycle::ConfigServed);

    // The node's API comes up and it tells the sink so.
    let double = serve_double(api, "cp11", ip, port);
    publish(ip, app.events.unwrap(), boot_events()).await;
    let published = Instant::now();
    let ready = wait_for(
        "the machine to be ready",
        Duration::from_secs(5),
        || async {
            let m = app.db.get_machine(cp.mac).await.unwrap().unwrap();
            (m.state == Lifecycle::Ready).then_some(m)
        },
    )
    .await;
    let took = published.elapsed();
    assert!(
        took < Duration::from_secs(3) && served.elapsed() < Duration::from_millis(15_000),
        "ready {took:?} after the events, {:?} after the config: that is the backoff, not the sink",
        served.elapsed()
    );
    assert_eq!(ready.state, Lifecycle::Ready);
    // The probe (an authenticated Version call) is what made it ready.
    assert!(!double.calls_of("Version").is_empty());
    let events = app
        .wait_events(cp.mac, |e| e.detail == "talos: stage running, ready")
        .await;
    assert!(events.iter().any(|e| e.kind == EventKind::ReportedIn));
    let news = talos_events(&events);
    assert_eq!(
        news,
        vec![
            "talos: sequence boot started",
            "talos: service apid running: Health check successful",
            "talos: stage running, ready",
        ],
        "{events:#?}"
    );
    let metrics = app.metrics().await;
    for kind in ["sequence", "phase", "task", "service", "machine-status"] {
        assert!(
            metrics.contains(&format!(
                "bootplane_talos_events_total{{kind=\"{kind}\"}} 1"
            )),
            "{kind}: {metrics}"
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_events_alone_never_mark_a_machine_ready() {
    let ip = Ipv4Addr::new(127, 0, 72, 11);
    // The node's API never answers (bound, never listening).
    let (_api, port) = api_socket(ip);
    let app = Appliance::start_with(|o| o.talos_api_port = Some(port)).await;
    let cp = node(ip, 11);
    provision(&app, 72, &[&cp]).await;
    let config = reqwest::get(app.url(&format!("/config?mac={}", cp.mac)))
        .await
        .unwrap();
    assert_eq!(config.status(), 200);
    publish(ip, app.events.unwrap(), boot_events()).await;
    let events = app
        .wait_events(cp.mac, |e| e.detail == "talos: stage running, ready")
        .await;
    assert!(!events.iter().any(|e| e.kind == EventKind::ReportedIn));
    // Told again (as after a reconnect): sequences are logged again, an unchanged status or
    // service state is not.
    publish(ip, app.events.unwrap(), boot_events()).await;
    wait_for(
        "the second sequence event",
        Duration::from_secs(5),
        || async {
            let events = app.db.events(cp.mac, 1000).await.unwrap();
            let sequences = talos_events(&events)
                .iter()
                .filter(|d| **d == "talos: sequence boot started")
                .count();
            (sequences == 2).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let events = app.db.events(cp.mac, 1000).await.unwrap();
    assert_eq!(
        talos_events(&events),
        vec![
            "talos: sequence boot started",
            "talos: service apid running: Health check successful",
            "talos: stage running, ready",
            "talos: sequence boot started",
        ]
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m = app.db.get_machine(cp.mac).await.unwrap().unwrap();
    assert_eq!(
        m.state,
        Lifecycle::ConfigServed,
        "an unauthenticated claim made it {}",
        m.state
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_ignores_unknown_peers_and_payloads_it_cannot_read() {
    let app = Appliance::start().await;
    let known = node(Ipv4Addr::new(127, 0, 73, 11), 11);
    app.db.add_machine(&known, kit::now_ms()).await.unwrap();
    let sink = app.events.unwrap();

    // An address that is no machine: the connection is closed, nothing is recorded.
    let stranger = Ipv4Addr::new(127, 0, 73, 99);
    let refused = async {
        let channel = sink_channel(stranger, sink).await?;
        EventSinkServiceClient::new(channel)
            .publish(boot_events().remove(0))
            .await
            .map(|_| ())
            .map_err(|s| Box::new(s) as Box<dyn std::error::Error>)?;
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(15), refused)
            .await
            .unwrap()
            .is_err(),
        "a stranger's event was accepted"
    );

    // A known node's garbage is acknowledged (Talos would retry it forever) and ignored.
    let garbage = EventRequest {
        data: Some(prost_types::Any {
            type_url: "type.googleapis.com/machine.MachineStatusEvent".into(),
            value: vec![0x0a, 0xff, 0xff, 0xff, 0xff],
        }),
        id: "x".into(),
        actor_id: String::new(),
    };
    let unknown_type = event(9, "AddressEvent", &m::PhaseEvent::default());
    let empty = EventRequest::default();
    let last = event(
        10,
        "ConfigValidationErrorEvent",
        &m::ConfigValidationErrorEvent {
            error: "machine.install.disk: required".into(),
        },
    );
    publish(
        known.ip.unwrap().addr,
        sink,
        vec![garbage, unknown_type, empty, last],
    )
    .await;
    let events = app.wait_event(known.mac, EventKind::TalosEvent).await;
    assert_eq!(
        talos_events(&events),
        vec!["talos: config validation error: machine.install.disk: required"]
    );
    let stranger_mac = Mac([0x52, 0x54, 0x00, 73, 0x00, 99]);
    assert!(app.db.get_machine(stranger_mac).await.unwrap().is_none());
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("bootplane_talos_events_dropped_total{reason=\"undecodable\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "bootplane_push_connections_refused_total{receiver=\"events\",reason=\"unknown-peer\"}"
        ),
        "{metrics}"
    );
    app.stop().await;
}

fn kmsg_line(seq: u64, msg: &str) -> String {
    format!(
        "{{\"clock\":{},\"facility\":\"kern\",\"msg\":{},\"priority\":\"info\",\"seq\":{seq},\"talos-level\":\"info\",\"talos-time\":\"2026-08-21T10:00:00.{seq:06}Z\"}}\n",
        seq * 1000,
        serde_json::to_string(msg).unwrap()
    )
}

async fn boot_log(app: &Appliance, mac: Mac) -> Vec<BootLogLine> {
    app.db.boot_log(mac, 100_000).await.unwrap()
}

/// Runs a `machines` CLI command against the appliance's database; returns its output.
async fn cli(app: &Appliance, args: &[&str]) -> String {
    let data = app.data.path().to_str().unwrap();
    let mut argv = vec!["bootplane", "machines"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["--data-dir", data]);
    let Command::Machines(cmd) = Cli::parse_from(argv).command else {
        panic!("not a machines command");
    };
    let mut out = Vec::new();
    bootplane::cli::machines(cmd, &bootplane::support::clock::SystemClock, &mut out)
        .await
        .unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_log_lines_land_in_the_boot_log_in_order() {
    let app = Appliance::start().await;
    let ip = Ipv4Addr::new(127, 0, 74, 11);
    let cp = node(ip, 11);
    app.db.add_machine(&cp, kit::now_ms()).await.unwrap();
    let mut tcp = connect_from(ip, app.kmsg.unwrap()).await.unwrap();
    let text: String = (0..300)
        .map(|i| kmsg_line(i, &format!("line {i} \u{1b}[1m\tä")))
        .collect();
    // Written in odd-sized pieces, so lines arrive split across reads.
    for chunk in text.as_bytes().chunks(777) {
        tcp.write_all(chunk).await.unwrap();
    }
    let lines = wait_for("300 lines", Duration::from_secs(5), || async {
        let lines = boot_log(&app, cp.mac).await;
        (lines.len() == 300).then_some(lines)
    })
    .await;
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line.msg, format!("line {i} \u{1b}[1m\tä"));
        assert_eq!(line.seq, Some(i as i64));
        assert_eq!(line.clock, Some(i as i64 * 1000));
        assert_eq!(line.facility.as_deref(), Some("kern"));
        assert_eq!(line.priority.as_deref(), Some("info"));
        assert_eq!(
            line.talos_time.as_deref(),
            Some(format!("2026-08-21T10:00:00.{i:06}Z").as_str())
        );
        assert_eq!(line.mac, cp.mac);
    }

    let json = cli(
        &app,
        &[
            "log",
            "--mac",
            &cp.mac.to_string(),
            "--limit",
            "2",
            "--json",
        ],
    )
    .await;
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed[0]["msg"], "line 298 \u{1b}[1m\tä");
    assert_eq!(parsed[1]["seq"], 299);
    assert_eq!(parsed.as_array().unwrap().len(), 2);
    let plain = cli(&app, &["log", "--mac", &cp.mac.to_string(), "--limit", "1"]).await;
    assert_eq!(
        plain,
        "2026-08-21T10:00:00.000299Z  info     line 299 \\u{1b}[1m\\tä\n"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_log_drops_garbage_oversize_lines_and_strangers_and_keeps_going() {
    let app = Appliance::start().await;
    let ip = Ipv4Addr::new(127, 0, 75, 11);
    let cp = node(ip, 11);
    app.db.add_machine(&cp, kit::now_ms()).await.unwrap();
    let kmsg = app.kmsg.unwrap();

    // A stranger is hung up on and stores nothing.
    let mut stranger = connect_from(Ipv4Addr::new(127, 0, 75, 99), kmsg)
        .await
        .unwrap();
    let _ = stranger
        .write_all(kmsg_line(1, "stranger").as_bytes())
        .await;
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), stranger.read(&mut byte))
        .await
        .expect("the stranger's connection stayed open");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");

    let mut tcp = connect_from(ip, kmsg).await.unwrap();
    let huge = format!("{{\"msg\":\"{}\"}}\n", "a".repeat(40_000));
    let mut text = String::new();
    text += &kmsg_line(1, "first");
    text += "this is not json\n";
    text += &huge;
    text += &kmsg_line(2, "second");
    text += "{\"seq\":3}\n";
    text += "\n";
    text += "[\"msg\"]\n";
    text += &kmsg_line(4, "third");
    tcp.write_all(text.as_bytes()).await.unwrap();
    tcp.write_all(&[0xff, 0xfe, b'\n']).await.unwrap();
    tcp.write_all(kmsg_line(5, "fourth").as_bytes())
        .await
        .unwrap();
    let lines = wait_for("the good lines", Duration::from_secs(5), || async {
        let lines = boot_log(&app, cp.mac).await;
        lines.iter().any(|l| l.msg == "fourth").then_some(lines)
    })
    .await;
    let msgs: Vec<&str> = lines.iter().map(|l| l.msg.as_str()).collect();
    assert_eq!(msgs, vec!["first", "second", "third", "fourth"]);
    assert!(app
        .db
        .get_machine(Mac([0x52, 0x54, 0x00, 75, 0x00, 99]))
        .await
        .unwrap()
        .is_none());
    let metrics = app.metrics().await;
    for expected in [
        "bootplane_kernel_log_dropped_total{reason=\"malformed\"} 4",
        "bootplane_kernel_log_dropped_total{reason=\"oversize\"} 1",
        "bootplane_kernel_log_lines_total 4",
        "bootplane_push_connections_refused_total{receiver=\"kernel-log\",reason=\"unknown-peer\"} 1",
    ] {
        assert!(metrics.contains(expected), "{expected}: {metrics}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_log_keeps_only_the_newest_lines_per_machine() {
    let app = Appliance::start_with(|o| o.boot_log_lines = Some(50)).await;
    let ip = Ipv4Addr::new(127, 0, 76, 11);
    let cp = node(ip, 11);
    app.db.add_machine(&cp, kit::now_ms()).await.unwrap();
    let mut tcp = connect_from(ip, app.kmsg.unwrap()).await.unwrap();
    for batch in 0..5u64 {
        let text: String = (batch * 100..batch * 100 + 100)
            .map(|i| kmsg_line(i, &format!("line {i}")))
            .collect();
        tcp.write_all(text.as_bytes()).await.unwrap();
        // Let some batches reach the database on their own.
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    let lines = wait_for("the newest line", Duration::from_secs(5), || async {
        let lines = boot_log(&app, cp.mac).await;
        lines
            .last()
            .is_some_and(|l| l.seq == Some(499))
            .then_some(lines)
    })
    .await;
    let seqs: Vec<i64> = lines.iter().map(|l| l.seq.unwrap()).collect();
    assert_eq!(seqs, (450..500).collect::<Vec<i64>>());
    app.stop().await;
}
