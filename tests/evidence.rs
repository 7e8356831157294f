//! Attacks from the provisioning LAN against the evidence rules (ARCHITECTURE.md, "Evidence"):
//! what a DHCP client writes into its packets never proves who it is.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use bootplane::config::{ConfigAccess, DhcpMode};
use bootplane::model::{EventKind, Mac, Machine, Role};
use common::{pxe_packet, send, Appliance, VERSION};
use dhcproto::v4::MessageType;

const VICTIM: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

fn victim() -> Mac {
    Mac(VICTIM)
}

async fn init_cluster_with_victim(app: &Appliance) {
    let bundle =
        bootplane::talos::secrets::SecretsBundle::generate(VERSION, std::time::SystemTime::now())
            .unwrap();
    let mut c = app.db.get_cluster(None).await.unwrap().unwrap();
    c.name = "lab".into();
    c.endpoint = Some("https://127.0.0.10:6443".into());
    c.talos_version = Some(VERSION.into());
    app.db
        .init_cluster("default", &c, &bundle.to_yaml(), 1)
        .await
        .unwrap();
    let mut m = Machine::discovered(victim());
    m.role = Role::Controlplane;
    m.cluster = "lab".into();
    m.hostname = Some("cp-1".into());
    m.ip = Some("127.0.0.11/8".parse().unwrap());
    app.db.add_machine(&m, 1).await.unwrap();
}

/// Waits until the appliance has handled `n` DHCP packets of `kind` (its event log says so).
async fn wait_handled(app: &Appliance, kind: EventKind, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let events = app.db.events(victim(), 1000).await.unwrap();
        if events.iter().filter(|e| e.kind == kind).count() >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} {kind:?} not handled: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn config_status(app: &Appliance) -> (u16, String) {
    let r = reqwest::get(app.url(&format!("/config?mac={}", victim())))
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Finding 1 of the attacker's review: a REQUEST with the victim's MAC in `chaddr` and the
/// attacker's own address in `ciaddr` (4011) or option 50 (67) made `/config` hand the
/// victim's config, every CA key included, to the attacker's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_proxy_dhcp_claims_never_open_a_machines_config() {
    let app = Appliance::start_with(|o| {
        o.dhcp_mode = Some(DhcpMode::Proxy);
        o.config_access = Some(ConfigAccess::Mac);
    })
    .await;
    init_cluster_with_victim(&app).await;
    let (dhcp, pxe) = (app.dhcp.unwrap(), app.pxe.unwrap());
    let attacker = Ipv4Addr::LOCALHOST;

    let (code, _) = config_status(&app).await;
    assert_eq!(code, 403, "no evidence yet");

    // On 4011: ciaddr is the attacker's address.
    send(
        pxe,
        &pxe_packet(MessageType::Request, VICTIM, attacker, None),
    )
    .await;
    // On 67: option 50 names it (a proxyDHCP REQUEST after the site server's OFFER).
    send(
        dhcp,
        &pxe_packet(
            MessageType::Request,
            VICTIM,
            Ipv4Addr::UNSPECIFIED,
            Some(attacker),
        ),
    )
    .await;
    wait_handled(&app, EventKind::ProxyAck, 2).await;

    let (code, body) = config_status(&app).await;
    assert_eq!(code, 403, "forged claims opened the config: {body}");
    assert!(
        !body.contains("-----BEGIN") && !body.contains("ca:"),
        "{body}"
    );
    app.stop().await;
}

/// The same in full mode: an INFORM's `ciaddr`, and a REQUEST for an address the server does
/// not give the victim, are no evidence either; the victim's real lease is, for its own
/// address only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_full_dhcp_claims_never_open_a_machines_config() {
    let app = Appliance::start_with(|o| {
        o.dhcp_mode = Some(DhcpMode::Full);
        o.dhcp_pool = Some("127.0.0.100-127.0.0.120".parse().unwrap());
        o.config_access = Some(ConfigAccess::Mac);
    })
    .await;
    init_cluster_with_victim(&app).await;
    let dhcp = app.dhcp.unwrap();
    let attacker = Ipv4Addr::LOCALHOST;

    send(
        dhcp,
        &pxe_packet(MessageType::Inform, VICTIM, attacker, None),
    )
    .await;
    send(
        dhcp,
        &pxe_packet(
            MessageType::Request,
            VICTIM,
            Ipv4Addr::UNSPECIFIED,
            Some(attacker),
        ),
    )
    .await;
    wait_handled(&app, EventKind::DhcpNak, 1).await;
    wait_handled(&app, EventKind::DhcpAck, 1).await;
    let (code, body) = config_status(&app).await;
    assert_eq!(code, 403, "forged claims opened the config: {body}");

    // The victim's own exchange: its static address, bound by our ACK (retransmitted, as
    // firmware does, until the inventory the server reads holds the new machine). A request
    // from that address is the machine's (loopback has no neighbour entries to contradict it).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        send(
            dhcp,
            &pxe_packet(
                MessageType::Request,
                VICTIM,
                Ipv4Addr::UNSPECIFIED,
                Some(Ipv4Addr::new(127, 0, 0, 11)),
            ),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let events = app.db.events(victim(), 1000).await.unwrap();
        if events
            .iter()
            .any(|e| e.kind == EventKind::DhcpAck && e.detail.contains("ip=127.0.0.11"))
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{events:#?}");
    }
    let from_victim = reqwest::Client::builder()
        .local_address(Some(Ipv4Addr::new(127, 0, 0, 11).into()))
        .build()
        .unwrap();
    let r = from_victim
        .get(app.url(&format!("/config?mac={}", victim())))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    // ...and still not from the attacker's address.
    let (code, _) = config_status(&app).await;
    assert_eq!(code, 403);
    app.stop().await;
}
