//! The Talos API client against Talos node doubles (in process, on loopback aliases
//! 127.0.0.1-4 and ephemeral ports, and once as the real `bootplane-talos-double` binary):
//! calls, status codes, and the mutual-TLS checks in both directions.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use bootplane::talos::api::{ApiError, BootstrapOutcome, TalosApi};
use bootplane::talos::secrets::SecretsBundle;
use bootplane::testkit::double::{
    control_router, issue_cert, DoubleConfig, EmbeddedError, EtcdChange, EtcdState, EtcdStore,
    LeafSpec, NodeRole, Phase, PhaseChange, TalosDouble,
};
use rcgen::ExtendedKeyUsagePurpose as Eku;
use tokio::net::TcpListener;
use tonic::Code;

fn bundle() -> &'static SecretsBundle {
    static B: OnceLock<SecretsBundle> = OnceLock::new();
    B.get_or_init(|| SecretsBundle::generate("v1.11", SystemTime::now()).unwrap())
}

/// A second cluster: its OS CA is a stranger to the first.
fn other_bundle() -> &'static SecretsBundle {
    static B: OnceLock<SecretsBundle> = OnceLock::new();
    B.get_or_init(|| SecretsBundle::generate("v1.11", SystemTime::now()).unwrap())
}

fn api() -> TalosApi {
    TalosApi::new(bundle(), SystemTime::now()).unwrap()
}

/// A client whose certificate is issued by the first cluster's OS CA with these roles and
/// extended key usages.
fn api_with_cert(organizations: &[&str], ekus: Vec<Eku>) -> TalosApi {
    let now = SystemTime::now();
    let (crt, key) = issue_cert(
        bundle().os_ca(),
        &LeafSpec {
            common_name: None,
            organizations: organizations.iter().map(|s| s.to_string()).collect(),
            ip_sans: Vec::new(),
            dns_sans: Vec::new(),
            extended_key_usages: ekus,
            not_before: now - Duration::from_secs(60),
            not_after: now + Duration::from_secs(3600),
        },
    )
    .unwrap();
    TalosApi::from_pem(bundle().os_ca().crt_pem(), &crt, &key).unwrap()
}

/// Starts a double for `bundle` on `ip`, port 0.
async fn start_with(
    bundle: &SecretsBundle,
    ip: [u8; 4],
    hostname: &str,
    role: NodeRole,
    tweak: impl FnOnce(&mut DoubleConfig),
) -> (TalosDouble, SocketAddr) {
    let listener = TcpListener::bind((IpAddr::from(ip), 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = DoubleConfig::new(hostname, role, addr);
    tweak(&mut config);
    let double = TalosDouble::new(bundle, config).unwrap();
    let serving = double.clone();
    tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });
    (double, addr)
}

async fn start(ip: [u8; 4], hostname: &str, role: NodeRole) -> (TalosDouble, SocketAddr) {
    start_with(bundle(), ip, hostname, role, |_| {}).await
}

fn codes(double: &TalosDouble, method: &str) -> Vec<String> {
    double
        .calls_of(method)
        .into_iter()
        .map(|c| c.code)
        .collect()
}

fn assert_denied(result: Result<impl std::fmt::Debug, ApiError>, what: &str) {
    match result {
        Err(ApiError::Denied(_)) => {}
        other => panic!("{what}: expected Denied, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn version_answers_with_the_talos_tag_and_is_recorded() {
    let (double, addr) = start([127, 0, 0, 1], "cp1", NodeRole::Controlplane).await;
    let v = api().version(addr).await.unwrap();
    assert_eq!(v.tag, "v1.11.6");
    assert_eq!(v.platform, "metal");
    assert_eq!(v.hostname, "", "a node dialled directly adds no metadata");
    let calls = double.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].method, "Version");
    assert_eq!(calls[0].code, "Ok");
    assert_eq!(calls[0].roles, vec!["os:admin".to_string()]);
    assert!(calls[0].peer.starts_with("127.0.0.1:"));
}

#[tokio::test]
async fn bootstrap_once_then_already_bootstrapped() {
    let (double, addr) = start([127, 0, 0, 2], "cp2", NodeRole::Controlplane).await;
    let api = api();
    assert_eq!(
        api.bootstrap(addr).await.unwrap(),
        BootstrapOutcome::Bootstrapped
    );
    let snap = double.snapshot();
    assert!(matches!(snap.etcd, EtcdState::Bootstrapped { .. }));
    assert_eq!(snap.cluster.members.len(), 1);
    assert_eq!(snap.cluster.members[0].hostname, "cp2");
    assert_eq!(
        snap.cluster.members[0].peer_urls,
        vec!["https://127.0.0.2:2380".to_string()]
    );

    assert_eq!(
        api.bootstrap(addr).await.unwrap(),
        BootstrapOutcome::AlreadyBootstrapped
    );
    assert_eq!(codes(&double, "Bootstrap"), ["Ok", "AlreadyExists"]);
    let again = double.calls_of("Bootstrap");
    assert_eq!(again[1].message, "etcd data directory is not empty");

    let members = api.etcd_members(addr).await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].hostname, "cp2");
}

#[tokio::test]
async fn bootstrap_on_a_worker_is_fatal_not_retryable() {
    let (double, addr) = start([127, 0, 0, 3], "w1", NodeRole::Worker).await;
    let err = api().bootstrap(addr).await.unwrap_err();
    match &err {
        ApiError::Rpc { code, message } => {
            assert_eq!(*code, Code::FailedPrecondition);
            assert_eq!(
                message,
                "bootstrap can only be performed on a control plane node"
            );
        }
        other => panic!("expected a fatal Rpc error, got {other:?}"),
    }
    assert!(!err.is_retryable());
    assert_eq!(double.snapshot().etcd, EtcdState::Empty);
    // Workers have no etcd API either (Unimplemented, as Talos).
    match api().etcd_members(addr).await {
        Err(ApiError::Rpc {
            code: Code::Unimplemented,
            message,
        }) => assert_eq!(
            message,
            "member list is only available on control plane nodes"
        ),
        other => panic!("expected Unimplemented, got {other:?}"),
    }
}

#[tokio::test]
async fn bootstrap_while_booting_is_not_ready_then_succeeds() {
    let (double, addr) = start_with(
        bundle(),
        [127, 0, 0, 1],
        "cp-boot",
        NodeRole::Controlplane,
        |c| c.ready_after = Some(Duration::from_secs(600)),
    )
    .await;
    let api = api();
    let err = api.bootstrap(addr).await.unwrap_err();
    match &err {
        ApiError::NotReady(msg) => assert!(msg.contains("bootstrap is not available yet")),
        other => panic!("expected NotReady, got {other:?}"),
    }
    assert!(err.is_retryable());
    assert_eq!(double.snapshot().phase, Phase::Booting);
    // Version answers while booting.
    api.version(addr).await.unwrap();

    double.set_phase(&PhaseChange {
        phase: Phase::Ready,
        ready_after_secs: None,
    });
    assert_eq!(
        api.bootstrap(addr).await.unwrap(),
        BootstrapOutcome::Bootstrapped
    );
    assert_eq!(codes(&double, "Bootstrap"), ["FailedPrecondition", "Ok"]);
}

#[tokio::test]
async fn three_control_planes_share_a_member_list_and_a_stale_member_is_removed() {
    let etcd = EtcdStore::memory();
    let mut nodes = Vec::new();
    for (i, ip) in [[127, 0, 0, 1], [127, 0, 0, 2], [127, 0, 0, 3]]
        .into_iter()
        .enumerate()
    {
        let store = etcd.clone();
        nodes.push(
            start_with(
                bundle(),
                ip,
                &format!("cp{}", i + 1),
                NodeRole::Controlplane,
                |c| c.etcd = store,
            )
            .await,
        );
    }
    let api = api();
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);

    // Before any bootstrap there is no etcd to ask.
    assert!(matches!(
        api.etcd_members(a.1).await,
        Err(ApiError::NotReady(_))
    ));

    assert_eq!(
        api.bootstrap(a.1).await.unwrap(),
        BootstrapOutcome::Bootstrapped
    );
    b.0.set_etcd(EtcdChange::Member).unwrap();
    c.0.set_etcd(EtcdChange::Member).unwrap();
    let members = api.etcd_members(b.1).await.unwrap();
    let names: Vec<_> = members.iter().map(|m| m.hostname.as_str()).collect();
    assert_eq!(names, ["cp1", "cp2", "cp3"]);
    assert_eq!(api.etcd_members(c.1).await.unwrap(), members);

    // cp2 is wiped: its etcd is empty, its member is stale, and it cannot rejoin yet.
    b.0.set_etcd(EtcdChange::Empty).unwrap();
    assert!(matches!(
        api.etcd_members(b.1).await,
        Err(ApiError::NotReady(_))
    ));
    assert!(b.0.set_etcd(EtcdChange::Member).is_err());
    let stale = members.iter().find(|m| m.hostname == "cp2").unwrap().id;

    // Removing it through a healthy control plane; a second removal finds nothing.
    api.etcd_remove_member(a.1, stale).await.unwrap();
    let names: Vec<_> = api
        .etcd_members(c.1)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.hostname)
        .collect();
    assert_eq!(names, ["cp1", "cp3"]);
    match api.etcd_remove_member(a.1, stale).await {
        Err(ApiError::Rpc {
            code: Code::NotFound,
            message,
        }) => assert_eq!(message, "etcdserver: member not found"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    // Removal needs etcd on the node asked.
    assert!(matches!(
        api.etcd_remove_member(b.1, 1).await,
        Err(ApiError::NotReady(_))
    ));

    // Now cp2 rejoins with a new member ID.
    b.0.set_etcd(EtcdChange::Member).unwrap();
    let rejoined = api.etcd_members(a.1).await.unwrap();
    assert_eq!(rejoined.len(), 3);
    assert!(rejoined.iter().all(|m| m.id != stale));

    // Exactly one Bootstrap reached any node.
    let bootstraps: usize = nodes
        .iter()
        .map(|(d, _)| d.calls_of("Bootstrap").len())
        .sum();
    assert_eq!(bootstraps, 1);
    assert_eq!(codes(&a.0, "EtcdRemoveMemberByID"), ["Ok", "NotFound"]);
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_rejected() {
    let (double, addr) = start([127, 0, 0, 2], "cp-ca", NodeRole::Controlplane).await;
    let (crt, key) = other_bundle().talos_client_cert(SystemTime::now()).unwrap();
    let stranger = TalosApi::from_pem(bundle().os_ca().crt_pem(), &crt, &key).unwrap();
    assert_denied(stranger.version(addr).await, "version");
    assert_denied(stranger.bootstrap(addr).await, "bootstrap");
    let snap = double.snapshot();
    assert!(
        snap.calls.is_empty(),
        "no RPC got through: {:?}",
        snap.calls
    );
    assert_eq!(snap.tls_rejections.len(), 2);
    assert_eq!(snap.etcd, EtcdState::Empty);
    // The cluster's own client still works.
    api().version(addr).await.unwrap();
}

#[tokio::test]
async fn a_reader_may_ask_the_version_but_not_bootstrap() {
    let (double, addr) = start([127, 0, 0, 3], "cp-reader", NodeRole::Controlplane).await;
    let reader = api_with_cert(&["os:reader"], vec![Eku::ClientAuth]);
    reader.version(addr).await.unwrap();
    match reader.bootstrap(addr).await {
        Err(ApiError::Denied(msg)) => assert!(msg.contains("not authorized"), "{msg}"),
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    assert_denied(reader.etcd_remove_member(addr, 1).await, "remove member");
    assert_eq!(codes(&double, "Bootstrap"), ["PermissionDenied"]);
    assert_eq!(double.snapshot().etcd, EtcdState::Empty);

    // No role at all: not even Version.
    let nobody = api_with_cert(&["someone"], vec![Eku::ClientAuth]);
    assert_denied(nobody.version(addr).await, "version without a role");
    // An admin certificate made the same way is accepted (the helper is not at fault).
    let admin = api_with_cert(&["os:admin"], vec![Eku::ClientAuth]);
    assert_eq!(
        admin.bootstrap(addr).await.unwrap(),
        BootstrapOutcome::Bootstrapped
    );
}

#[tokio::test]
async fn a_client_certificate_whose_eku_is_not_exactly_client_auth_is_rejected() {
    let (double, addr) = start([127, 0, 0, 1], "cp-eku", NodeRole::Controlplane).await;
    let cases = [
        (
            "clientAuth + serverAuth",
            vec![Eku::ClientAuth, Eku::ServerAuth],
        ),
        ("serverAuth only", vec![Eku::ServerAuth]),
        ("no EKU extension", vec![]),
        (
            "clientAuth + codeSigning",
            vec![Eku::ClientAuth, Eku::CodeSigning],
        ),
    ];
    for (what, ekus) in cases {
        let client = api_with_cert(&["os:admin"], ekus);
        assert_denied(client.version(addr).await, what);
        assert_denied(client.bootstrap(addr).await, what);
    }
    assert!(double.calls().is_empty());
    assert_eq!(double.snapshot().tls_rejections.len(), 8);
    // Exactly clientAuth passes.
    let ok = api_with_cert(&["os:admin"], vec![Eku::ClientAuth]);
    ok.version(addr).await.unwrap();
}

#[tokio::test]
async fn a_node_certificate_not_from_the_os_ca_is_refused() {
    // A double of another cluster: its server certificate comes from a different OS CA.
    let (double, addr) = start_with(
        other_bundle(),
        [127, 0, 0, 2],
        "stranger",
        NodeRole::Controlplane,
        |_| {},
    )
    .await;
    match api().bootstrap(addr).await {
        Err(ApiError::Denied(msg)) => assert!(msg.contains("not accepted"), "{msg}"),
        other => panic!("expected Denied, got {other:?}"),
    }
    assert!(double.calls().is_empty(), "no RPC was sent");
    assert_eq!(double.snapshot().etcd, EtcdState::Empty);
    // Its own cluster's client is served.
    TalosApi::new(other_bundle(), SystemTime::now())
        .unwrap()
        .version(addr)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_node_certificate_for_another_address_is_refused() {
    // Listening on 127.0.0.3 but with a certificate naming 127.0.0.1 only.
    let listener = TcpListener::bind("127.0.0.3:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = DoubleConfig::new(
        "misnamed",
        NodeRole::Controlplane,
        SocketAddr::from(([127, 0, 0, 1], addr.port())),
    );
    let double = TalosDouble::new(bundle(), config).unwrap();
    let serving = double.clone();
    tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });
    assert_denied(api().version(addr).await, "certificate for another IP");
    assert!(double.calls().is_empty());
}

#[tokio::test]
async fn an_error_embedded_in_the_reply_metadata_is_surfaced() {
    let (double, addr) = start([127, 0, 0, 3], "cp-embedded", NodeRole::Controlplane).await;
    let api = api();
    double.set_embedded_error(Some(EmbeddedError {
        method: Some("Version".to_string()),
        hostname: "10.0.0.9".to_string(),
        error: "rpc error: code = Unavailable desc = connection refused".to_string(),
        code: 14,
        message: "connection refused".to_string(),
    }));
    match api.version(addr).await {
        Err(ApiError::Node { hostname, error }) => {
            assert_eq!(hostname, "10.0.0.9");
            assert!(error.contains("connection refused"), "{error}");
        }
        other => panic!("expected a per-node error, got {other:?}"),
    }
    // A status alone (no error text) counts too.
    double.set_embedded_error(Some(EmbeddedError {
        method: None,
        hostname: "cp-embedded".to_string(),
        error: String::new(),
        code: 9,
        message: "time is not in sync yet".to_string(),
    }));
    match api.etcd_remove_member(addr, 7).await {
        Err(ApiError::Node { error, .. }) => {
            assert!(error.contains("FailedPrecondition"), "{error}");
            assert!(error.contains("time is not in sync yet"), "{error}");
        }
        other => panic!("expected a per-node error, got {other:?}"),
    }
    match api.bootstrap(addr).await {
        Err(ApiError::Node { .. }) => {}
        other => panic!("expected a per-node error, got {other:?}"),
    }
    assert_eq!(double.snapshot().etcd, EtcdState::Empty);
    // An embedded AlreadyExists from Bootstrap means done.
    double.set_embedded_error(Some(EmbeddedError {
        method: Some("Bootstrap".to_string()),
        hostname: "cp-embedded".to_string(),
        error: "rpc error: code = AlreadyExists desc = etcd data directory is not empty".into(),
        code: 6,
        message: "etcd data directory is not empty".to_string(),
    }));
    assert_eq!(
        api.bootstrap(addr).await.unwrap(),
        BootstrapOutcome::AlreadyBootstrapped
    );
    double.set_embedded_error(None);
    api.version(addr).await.unwrap();
    assert_eq!(codes(&double, "Version"), ["EmbeddedError", "Ok"]);
    assert_eq!(codes(&double, "EtcdRemoveMemberByID"), ["EmbeddedError"]);
    assert_eq!(
        codes(&double, "Bootstrap"),
        ["EmbeddedError", "EmbeddedError"]
    );
}

#[tokio::test]
async fn nothing_listening_or_not_talos_is_unreachable() {
    let api = api().with_timeouts(Duration::from_millis(500), Duration::from_secs(2));
    // A port nobody listens on.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let err = api.version(closed).await.unwrap_err();
    assert!(matches!(err, ApiError::Unreachable(_)), "{err:?}");
    assert!(err.is_retryable());

    // Something that is not TLS: answers plain HTTP and hangs up.
    let l = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let plain = l.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s
                .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    });
    let err = api.version(plain).await.unwrap_err();
    assert!(matches!(err, ApiError::Unreachable(_)), "{err:?}");

    // Something that accepts and says nothing: the connect timeout applies.
    let l = TcpListener::bind("127.0.0.3:0").await.unwrap();
    let silent = l.local_addr().unwrap();
    let keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let started = std::time::Instant::now();
    let err = api.version(silent).await.unwrap_err();
    assert!(matches!(err, ApiError::Unreachable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    keep.abort();
}

#[tokio::test]
async fn the_state_file_and_control_api_follow_every_change() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("cp1.json");
    let state_file = state.clone();
    let (double, addr) = start_with(
        bundle(),
        [127, 0, 0, 1],
        "cp-ctl",
        NodeRole::Controlplane,
        |c| c.state_file = Some(state_file),
    )
    .await;
    let control = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let control_addr = control.local_addr().unwrap();
    let router = control_router(double.clone());
    tokio::spawn(async move { axum::serve(control, router).await });
    let http = reqwest::Client::new();
    let url = |p: &str| format!("http://{control_addr}{p}");

    let read = |path: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    assert_eq!(read(&state)["etcd"]["state"], "empty");
    assert_eq!(read(&state)["phase"], "ready");

    let api = api();
    api.bootstrap(addr).await.unwrap();
    let s = read(&state);
    assert_eq!(s["etcd"]["state"], "bootstrapped");
    assert_eq!(s["calls"][0]["method"], "Bootstrap");
    assert_eq!(s["calls"][0]["code"], "Ok");
    assert_eq!(s["cluster"]["members"][0]["hostname"], "cp-ctl");

    // Wipe through the control API; Bootstrap is possible again.
    let r = http
        .post(url("/etcd"))
        .json(&serde_json::json!({"state": "empty"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(read(&state)["etcd"]["state"], "empty");
    let r = http
        .post(url("/phase"))
        .json(&serde_json::json!({"phase": "booting"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(matches!(
        api.bootstrap(addr).await,
        Err(ApiError::NotReady(_))
    ));
    http.post(url("/phase"))
        .json(&serde_json::json!({"phase": "ready"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        api.bootstrap(addr).await.unwrap(),
        BootstrapOutcome::Bootstrapped
    );

    // Members can be set; joining while our own member is listed is a conflict.
    let r = http
        .put(url("/members"))
        .json(&serde_json::json!([{"id": 42, "hostname": "cp9",
            "peer_urls": ["https://10.0.0.9:2380"]}]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let members = api.etcd_members(addr).await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!((members[0].id, members[0].hostname.as_str()), (42, "cp9"));
    http.put(url("/members"))
        .json(&serde_json::json!([{"id": 1, "hostname": "cp-ctl",
            "peer_urls": ["https://127.0.0.1:2380"]}]))
        .send()
        .await
        .unwrap();
    http.post(url("/etcd"))
        .json(&serde_json::json!({"state": "empty"}))
        .send()
        .await
        .unwrap();
    let r = http
        .post(url("/etcd"))
        .json(&serde_json::json!({"state": "member"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);

    let got: serde_json::Value = http
        .get(url("/state"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got, read(&state));
    assert_eq!(got["calls"].as_array().unwrap().len(), 4);

    let r = http.delete(url("/calls")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert!(read(&state)["calls"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn the_double_binary_serves_three_nodes_sharing_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets.yaml");
    std::fs::write(&secrets, bundle().to_yaml()).unwrap();
    let etcd = dir.path().join("etcd.json");

    let mut children = Vec::new();
    let mut nodes = Vec::new();
    for i in 1..=3u8 {
        let state = dir.path().join(format!("cp{i}.json"));
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_bootplane-talos-double"))
            .args(["--listen", &format!("127.0.0.{i}:0")])
            .arg("--secrets")
            .arg(&secrets)
            .args(["--hostname", &format!("cp{i}"), "--role", "controlplane"])
            .arg("--state")
            .arg(&state)
            .arg("--etcd-cluster")
            .arg(&etcd)
            .arg("--auto-join")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let addr: SocketAddr = line
            .strip_prefix("talos-double listening on ")
            .unwrap()
            .parse()
            .unwrap();
        children.push(child);
        nodes.push((addr, state));
    }

    let api = api();
    for (addr, _) in &nodes {
        assert_eq!(api.version(*addr).await.unwrap().tag, "v1.11.6");
    }
    assert_eq!(
        api.bootstrap(nodes[0].0).await.unwrap(),
        BootstrapOutcome::Bootstrapped
    );
    // The others joined by themselves: a Bootstrap there finds etcd data.
    assert_eq!(
        api.bootstrap(nodes[1].0).await.unwrap(),
        BootstrapOutcome::AlreadyBootstrapped
    );
    api.version(nodes[2].0).await.unwrap();
    let names: Vec<_> = api
        .etcd_members(nodes[2].0)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.hostname)
        .collect();
    assert_eq!(names, ["cp1", "cp2", "cp3"]);

    let successful_bootstraps: usize = nodes
        .iter()
        .map(|(_, state)| {
            let s: serde_json::Value =
                serde_json::from_slice(&std::fs::read(state).unwrap()).unwrap();
            s["calls"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["method"] == "Bootstrap" && c["code"] == "Ok")
                .count()
        })
        .sum();
    assert_eq!(successful_bootstraps, 1);

    for mut child in children {
        let pid = child.id().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "graceful exit on SIGTERM: {status:?}");
    }
}

/// A node with its own TLS (the cluster's OS CA, its address) at `ip`, which reads a whole
/// request, says how many bytes it read, then hands its session to `then` instead of answering.
async fn node_that_reads_the_request<F, Fut>(
    ip: &str,
    then: F,
) -> (SocketAddr, tokio::sync::oneshot::Receiver<usize>)
where
    F: FnOnce(tokio_rustls::server::TlsStream<tokio::net::TcpStream>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind(format!("{ip}:0")).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let node = TalosDouble::new(
        bundle(),
        DoubleConfig::new("reader", NodeRole::Controlplane, addr),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(node.tls_config());
    let (got_tx, got) = tokio::sync::oneshot::channel::<usize>();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        // The HTTP/2 preface, the client's settings, then the request's HEADERS and DATA:
        // the request's path is in the HEADERS (HPACK may compress it, so wait for the
        // frames after the preface rather than for the text).
        while seen.len() < 24 + 60 {
            let n = tls.read(&mut buf).await.unwrap();
            assert!(n > 0, "the client hung up first");
            seen.extend_from_slice(&buf[..n]);
        }
        let _ = got_tx.send(seen.len());
        then(tls).await;
    });
    (addr, got)
}

/// A Bootstrap that reached the node but whose connection broke before the answer may have
/// started etcd: the error says so (retryable, not a refusal, not "never reached the node").
#[tokio::test]
async fn a_connection_cut_after_the_request_left_is_an_unknown_outcome() {
    // Its connection goes away (power cut, crash) before any answer.
    let (addr, got) =
        node_that_reads_the_request("127.0.0.4", |tls| async move { drop(tls) }).await;
    let err = api().bootstrap(addr).await.unwrap_err();
    let read = got.await.expect("the request reached the node");
    println!("after the node read {read} bytes: {err:?}");
    assert!(matches!(err, ApiError::NotReady(_)), "{err:?}");
}

/// The same when what comes back is not a record the session's key made (a middlebox, a
/// corrupted answer): the client's TLS fails mid-call, and the node may have acted on it.
#[tokio::test]
async fn a_broken_tls_session_after_the_request_left_is_an_unknown_outcome() {
    use tokio::io::AsyncWriteExt;
    let (addr, got) = node_that_reads_the_request("127.0.0.5", |tls| async move {
        let (mut tcp, _) = tls.into_inner();
        // A TLS 1.3 application-data record whose contents no key decrypts.
        let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x20];
        record.extend_from_slice(&[0x5a; 32]);
        tcp.write_all(&record).await.unwrap();
        // Keep the connection open: the failure must come from the record, not a hang-up.
        tokio::time::sleep(Duration::from_secs(5)).await;
    })
    .await;
    let err = api().bootstrap(addr).await.unwrap_err();
    let read = got.await.expect("the request reached the node");
    println!("after the node read {read} bytes: {err:?}");
    // The outcome is unknown, not "never sent".
    assert!(matches!(err, ApiError::NotReady(_)), "{err:?}");
}
