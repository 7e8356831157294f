//! Attacks from the provisioning LAN against the evidence rules (ARCHITECTURE.md, "Evidence"):
//! what a DHCP client writes into its packets never proves who it is.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::kit::{self, pxe_packet, send, Appliance, VERSION};
use bootplane::config::{ConfigAccess, DhcpMode};
use bootplane::model::{Mac, Machine, Role};
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

/// Waits until the appliance has sent `n` DHCP replies of `kind` (its `/metrics` count every
/// reply; the event log leaves out a DHCP sighting that repeats one from moments before).
async fn wait_handled(app: &Appliance, kind: &str, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let prefix = format!("bootplane_dhcp_replies_total{{kind=\"{kind}\"}} ");
    loop {
        let text = app.metrics().await;
        let sent = text
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |v| v.trim().parse::<u64>().unwrap());
        if sent >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} {kind} replies not sent: {sent}"
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
    wait_handled(&app, "proxy-ack", 2).await;

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
    wait_handled(&app, "nak", 1).await;
    wait_handled(&app, "ack", 1).await;
    let (code, body) = config_status(&app).await;
    assert_eq!(code, 403, "forged claims opened the config: {body}");

    // The victim's own exchange: its static address, bound by our ACK (retransmitted, as
    // firmware does, until the inventory the server reads holds the new machine). A request
    // from that address is the machine's (loopback has no neighbour entries to contradict it).
    app.lease(victim(), Ipv4Addr::new(127, 0, 0, 11)).await;
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

/// What Talos's config download does with `talos.config.oauth.client_id=` on its command line
/// (siderolabs/talos `platform/metal/oauth2`): the device authorization request at the config
/// URL's host with path `/device/code` (the URL's query kept), with its extra variables as
/// form fields, then polls of `/token` with the same fields, then the config GET with the
/// token. Returns the user code and the device code.
async fn talos_device_request(app: &Appliance, mac: Mac) -> (String, String) {
    talos_device_request_from(app, mac, Ipv4Addr::LOCALHOST).await
}

async fn talos_device_request_from(app: &Appliance, mac: Mac, from: Ipv4Addr) -> (String, String) {
    let url = app.url(&format!("/device/code?mac={mac}"));
    let r = reqwest::Client::builder()
        .local_address(Some(from.into()))
        .build()
        .unwrap()
        .post(url)
        .form(&[("client_id", "bootplane"), ("mac", &mac.to_string())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let answer: serde_json::Value = r.json().await.unwrap();
    for field in ["verification_uri", "expires_in", "interval"] {
        assert!(answer.get(field).is_some(), "{answer}");
    }
    (
        answer["user_code"].as_str().unwrap().to_string(),
        answer["device_code"].as_str().unwrap().to_string(),
    )
}

/// One poll of the token endpoint: the token, or the RFC 8628 error code.
async fn talos_token_poll(app: &Appliance, mac: Mac, device_code: &str) -> Result<String, String> {
    let r = reqwest::Client::new()
        .post(app.url("/token"))
        .form(&[
            ("client_id", "bootplane"),
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("device_code", device_code),
            ("mac", &mac.to_string()),
        ])
        .send()
        .await
        .unwrap();
    let ok = r.status().is_success();
    let body: serde_json::Value = r.json().await.unwrap();
    if ok {
        assert_eq!(body["token_type"], "Bearer", "{body}");
        Ok(body["access_token"].as_str().unwrap().to_string())
    } else {
        Err(body["error"].as_str().unwrap().to_string())
    }
}

async fn config_with(app: &Appliance, mac: Mac, token: Option<&str>) -> u16 {
    let mut r = reqwest::Client::new().get(app.url(&format!("/config?mac={mac}")));
    if let Some(token) = token {
        r = r.bearer_auth(token);
    }
    r.send().await.unwrap().status().as_u16()
}

/// `--config-access oauth`: the config leaves only with a token an operator's approval issued
/// (in the UI), for that machine only; an armed window approves one install by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_flow_gives_a_config_only_after_approval_and_only_for_that_machine() {
    let app = Appliance::start_with(|o| {
        o.config_access = Some(ConfigAccess::Oauth);
        o.dhcp_mode = Some(DhcpMode::Full);
    })
    .await;
    app.add_assets(10, 10);
    init_cluster_with_victim(&app).await;
    let other: Mac = "52:54:00:12:34:57".parse().unwrap();
    let mut m = Machine::discovered(other);
    m.role = Role::Worker;
    m.cluster = "lab".into();
    m.hostname = Some("w-1".into());
    m.ip = Some("127.0.0.21/8".parse().unwrap());
    app.db.add_machine(&m, 1).await.unwrap();

    // The install script tells Talos to run the flow.
    let script = reqwest::get(app.url(&format!("/machine.ipxe?mac={}", victim())))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        script.contains("talos.config.oauth.client_id=bootplane")
            && script.contains("talos.config.oauth.extra_variable=mac"),
        "{script}"
    );

    let (user_code, device_code) = talos_device_request(&app, victim()).await;
    assert_eq!(
        talos_token_poll(&app, victim(), &device_code).await,
        Err("authorization_pending".into())
    );
    assert_eq!(config_with(&app, victim(), None).await, 403);
    assert_eq!(config_with(&app, victim(), Some("bpt_made_up")).await, 403);

    // The operator sees the request, with the MAC, and approves its code.
    let session = app.login().await;
    let client = kit::no_redirects();
    let page = client
        .get(app.url(&format!("/ui/devices?code={user_code}")))
        .header("cookie", &session.cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(&user_code) && page.contains(&victim().to_string()),
        "{page}"
    );
    let r = client
        .post(app.url("/ui/devices/decide"))
        .header("cookie", &session.cookie)
        .form(&[
            ("csrf", session.csrf.as_str()),
            ("code", &user_code.to_lowercase()),
            ("action", "approve"),
        ])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());

    let token = talos_token_poll(&app, victim(), &device_code)
        .await
        .unwrap();
    assert_eq!(config_with(&app, victim(), Some(&token)).await, 200);
    assert_eq!(
        config_with(&app, other, Some(&token)).await,
        403,
        "a token for one machine fetched another's config"
    );
    assert_eq!(
        talos_token_poll(&app, victim(), &device_code).await,
        Err("expired_token".into()),
        "a device code is redeemed once"
    );

    // Unattended: the cluster is armed for 5 minutes; the worker's request is approved at
    // once, and only one install per machine.
    let r = client
        .post(app.url("/ui/devices/arm"))
        .header("cookie", &session.cookie)
        .form(&[
            ("csrf", session.csrf.as_str()),
            ("target", "cluster:lab"),
            ("minutes", "5"),
        ])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
    // A stranger claiming the worker's MAC inside the window gets nothing by itself.
    let (_, forged) = talos_device_request(&app, other).await;
    assert_eq!(
        talos_token_poll(&app, other, &forged).await,
        Err("authorization_pending".into()),
        "an armed window approved a request from an address that is not the machine's"
    );
    // The worker itself: its DHCP exchange binds its address, and its request comes from it.
    let worker_ip = Ipv4Addr::new(127, 0, 0, 21);
    app.lease(other, worker_ip).await;
    let (_, code) = talos_device_request_from(&app, other, worker_ip).await;
    let token = talos_token_poll(&app, other, &code).await.unwrap();
    assert_eq!(config_with(&app, other, Some(&token)).await, 200);
    let (_, again) = talos_device_request_from(&app, other, worker_ip).await;
    assert_eq!(
        talos_token_poll(&app, other, &again).await,
        Err("authorization_pending".into()),
        "one install per machine"
    );
    // Without a session, no approval.
    let r = client
        .post(app.url("/ui/devices/decide"))
        .form(&[("code", user_code.as_str()), ("action", "approve")])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection() || r.status().is_client_error());
    app.stop().await;
}

/// A query parameter that reaches an iPXE script is whitelisted: `arch` with a newline and an
/// iPXE command (`shell`) used to land in the script's retry line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_parameters_cannot_inject_ipxe_commands() {
    let app = Appliance::start().await;
    init_cluster_with_victim(&app).await;
    let r = reqwest::get(app.url(&format!(
        "/machine.ipxe?mac={}&arch=x86_64%0Ashell%0A%23",
        victim()
    )))
    .await
    .unwrap();
    let code = r.status().as_u16();
    let body = r.text().await.unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(!body.contains("\nshell"), "{body}");
    // The values iPXE really sends still work.
    for arch in ["x86_64", "arm64", "i386"] {
        let r = reqwest::get(app.url(&format!("/machine.ipxe?mac={}&arch={arch}", victim())))
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{arch}");
        let body = r.text().await.unwrap();
        assert!(body.starts_with("#!ipxe"), "{body}");
        assert!(!body.contains("\nshell"), "{body}");
    }
    app.stop().await;
}
