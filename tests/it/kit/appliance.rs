//! A running appliance on loopback ephemeral ports, for black-box tests with real clients.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bootplane::app::{self, Listeners};
use bootplane::config::{Config, DhcpMode, PortSetting, ServeOptions};
use bootplane::db::Db;
use bootplane::model::{Event, EventKind, Mac};
use bootplane::net::InterfaceInfo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub const VERSION: &str = "v1.11.6";
/// The admin password every test appliance starts with (`ServeOptions.admin_password`).
pub const ADMIN_PASSWORD: &str = "test-admin-password";

pub struct Appliance {
    pub http: SocketAddr,
    /// The HTTPS listener (UI and API), unless a test turned it off.
    pub https: Option<SocketAddr>,
    pub tftp: SocketAddr,
    /// Talos's event sink and the kernel log receiver, on ephemeral ports unless a test
    /// turned them off.
    pub events: Option<SocketAddr>,
    pub kmsg: Option<SocketAddr>,
    /// The DHCP server port and the PXE boot-server port, on loopback ephemeral ports, when a
    /// test turned DHCP on (`dhcp_mode`).
    pub dhcp: Option<SocketAddr>,
    pub pxe: Option<SocketAddr>,
    pub data: tempfile::TempDir,
    pub images: tempfile::TempDir,
    pub ipxe: tempfile::TempDir,
    pub db: Db,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Deterministic pseudo-random bytes, so a corrupted byte anywhere is noticed.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

impl Appliance {
    pub async fn start() -> Appliance {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(customise: impl FnOnce(&mut ServeOptions)) -> Appliance {
        let data = tempfile::tempdir().unwrap();
        let images = tempfile::tempdir().unwrap();
        let ipxe = tempfile::tempdir().unwrap();
        std::fs::write(ipxe.path().join("undionly.kpxe"), pattern(70_000, 1)).unwrap();
        std::fs::write(ipxe.path().join("ipxe.efi"), pattern(1_000_000, 2)).unwrap();
        std::fs::write(ipxe.path().join("snponly.efi"), pattern(200_000, 3)).unwrap();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tftp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let events = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let kmsg = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let https = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_addr = http.local_addr().unwrap();
        let tftp_addr = tftp.local_addr().unwrap();
        let mut options = ServeOptions {
            data_dir: Some(data.path().to_path_buf()),
            advertise_ip: Some(Ipv4Addr::LOCALHOST),
            http_port: Some(http_addr.port()),
            tftp_port: Some(tftp_addr.port()),
            dhcp_mode: Some(DhcpMode::Off),
            ipxe_dir: Some(ipxe.path().to_path_buf()),
            images_dir: Some(images.path().to_path_buf()),
            talos_version: Some(VERSION.into()),
            retry_secs: Some(3),
            config_access: Some(bootplane::config::ConfigAccess::Any),
            events_port: Some(PortSetting::Port(events.local_addr().unwrap().port())),
            kernel_log_port: Some(PortSetting::Port(kmsg.local_addr().unwrap().port())),
            https_port: Some(PortSetting::Port(https.local_addr().unwrap().port())),
            admin_password: Some(bootplane::config::Secret(ADMIN_PASSWORD.into())),
            ..Default::default()
        };
        customise(&mut options);
        // A test that turns a receiver off (or moves it) gets no listener for it.
        let keep = |listener: TcpListener, setting: Option<PortSetting>| {
            let addr = listener.local_addr().unwrap();
            (setting == Some(PortSetting::Port(addr.port()))).then_some((listener, addr))
        };
        let events = keep(events, options.events_port);
        let kmsg = keep(kmsg, options.kernel_log_port);
        let https = keep(https, options.https_port);
        let https_addr = https.as_ref().map(|h| h.1);
        let (events_addr, kmsg_addr) = (events.as_ref().map(|e| e.1), kmsg.as_ref().map(|k| k.1));
        let iface = InterfaceInfo {
            name: "lo".into(),
            index: 1,
            cidr: "127.0.0.1/8".parse().unwrap(),
            gateway: None,
        };
        let config = Config::resolve(options, iface.clone()).unwrap();
        // DHCP, when a test asks for it, on ephemeral loopback ports.
        let dhcp = (config.dhcp.mode != DhcpMode::Off).then(|| {
            let mut ephemeral = config.dhcp.clone();
            ephemeral.port = 0;
            ephemeral.pxe_port = 0;
            bootplane::dhcp::bind(&ephemeral, &iface).unwrap()
        });
        let dhcp_addr = dhcp.as_ref().map(|d| d.dhcp.local_addr().unwrap());
        let pxe_addr = dhcp
            .as_ref()
            .and_then(|d| d.pxe.as_ref().map(|p| p.local_addr().unwrap()));
        // The HTTPS certificate is made here, the way `run` makes it on a first start, so a
        // test can read it at once; `run` then reuses it.
        if let Some(https) = &config.https {
            bootplane::app::tls::server_config(&https.cert).unwrap();
        }
        let db = Db::open(data.path()).await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let listeners = Listeners {
            http,
            https: https.map(|h| h.0),
            tftp,
            dhcp,
            ra: None,
            talos_events: events.map(|e| e.0),
            kernel_logs: kmsg.map(|k| k.0),
        };
        let task = tokio::spawn(app::run(
            config,
            db.clone(),
            bootplane::support::clock::system(),
            listeners,
            async move {
                let _ = stopped.await;
            },
        ));
        Appliance {
            http: http_addr,
            https: https_addr,
            tftp: tftp_addr,
            events: events_addr,
            kmsg: kmsg_addr,
            dhcp: dhcp_addr,
            pxe: pxe_addr,
            data,
            images,
            ipxe,
            db,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// Logs in as admin over HTTP and returns the session cookie and its CSRF token.
    pub async fn login(&self) -> Session {
        let client = no_redirects();
        let r = client
            .post(self.url("/login"))
            .form(&[("username", "admin"), ("password", ADMIN_PASSWORD)])
            .send()
            .await
            .unwrap();
        assert!(r.status().is_redirection(), "login failed: {}", r.status());
        let cookie = session_cookie(&r).expect("login sets the session cookie");
        let page = client
            .get(self.url("/ui/tokens"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        let html = page.text().await.unwrap();
        let marker = "name=\"csrf\" value=\"";
        let start = html.find(marker).expect("pages carry the CSRF token") + marker.len();
        let end = start + html[start..].find('"').unwrap();
        Session {
            cookie,
            csrf: html[start..end].to_string(),
        }
    }

    /// Writes stand-in boot assets for `VERSION` and returns the kernel and initramfs bytes.
    pub fn add_assets(&self, kernel_len: usize, initrd_len: usize) -> (Vec<u8>, Vec<u8>) {
        let dir = self.images.path().join(VERSION);
        std::fs::create_dir_all(&dir).unwrap();
        let kernel = pattern(kernel_len, 11);
        let initrd = pattern(initrd_len, 12);
        std::fs::write(dir.join("vmlinuz-amd64"), &kernel).unwrap();
        std::fs::write(dir.join("initramfs-amd64.xz"), &initrd).unwrap();
        (kernel, initrd)
    }

    /// Waits until `mac` has an event of `kind`, returning all its events.
    pub async fn wait_event(&self, mac: Mac, kind: EventKind) -> Vec<Event> {
        self.wait_events(mac, |e| e.kind == kind).await
    }

    /// Waits until one of `mac`'s events satisfies `pred`, returning all its events.
    pub async fn wait_events(&self, mac: Mac, pred: impl Fn(&Event) -> bool) -> Vec<Event> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let events = self.db.events(mac, 1000).await.unwrap();
            if events.iter().any(&pred) {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "awaited event for {mac} never came; events: {events:#?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

/// A logged-in browser session: the `Cookie` header value and the session's CSRF token.
#[derive(Clone, Debug)]
pub struct Session {
    pub cookie: String,
    pub csrf: String,
}

/// An HTTP client that shows redirects instead of following them.
pub fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The `bootplane_session=…` pair a response sets, if any.
pub fn session_cookie(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .find(|kv| kv.starts_with("bootplane_session=") && kv.len() > "bootplane_session=".len())
        .map(str::to_string)
}

/// Runs a real client program and returns (success, stdout, stderr).
pub fn run(program: &str, args: &[&str], cwd: Option<&Path>) -> (bool, Vec<u8>, String) {
    let mut cmd = Command::new(program);
    cmd.args(args);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {program}: {e} (is it installed? .ci/run installs it)")
    });
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn tmp_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// `run` on a blocking thread, so the appliance keeps serving meanwhile.
pub async fn run_client(
    program: &'static str,
    args: Vec<String>,
    cwd: Option<PathBuf>,
) -> (bool, Vec<u8>, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(program, &args, cwd.as_deref())
    })
    .await
    .unwrap()
}

pub fn s(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// One secrets bundle for every orchestrator-style test; each test has its own database, so
/// sharing it changes nothing else. Making one takes seconds (its RSA key), so the first run
/// keeps it for later runs in Cargo's scratch directory for integration tests.
pub fn cached_bundle() -> &'static bootplane::talos::secrets::SecretsBundle {
    use bootplane::talos::secrets::SecretsBundle;
    static B: std::sync::OnceLock<SecretsBundle> = std::sync::OnceLock::new();
    B.get_or_init(|| {
        let kept = Path::new(env!("CARGO_TARGET_TMPDIR")).join("orchestrator-secrets.yaml");
        if let Some(bundle) = std::fs::read_to_string(&kept)
            .ok()
            .and_then(|text| SecretsBundle::from_yaml(&text).ok())
        {
            return bundle;
        }
        let bundle = SecretsBundle::generate(VERSION, std::time::SystemTime::now()).unwrap();
        let partial = kept.with_extension(format!("{}.partial", std::process::id()));
        if std::fs::write(&partial, bundle.to_yaml()).is_ok() {
            let _ = std::fs::rename(&partial, &kept);
        }
        bundle
    })
}

/// Milliseconds since the Unix epoch, as the appliance's clock gives them.
pub fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// A PXE client's packet (UEFI x64, option 60/93/97) with the fields an attacker chooses.
pub fn pxe_packet(
    kind: dhcproto::v4::MessageType,
    mac: [u8; 6],
    ciaddr: Ipv4Addr,
    requested: Option<Ipv4Addr>,
) -> Vec<u8> {
    use dhcproto::v4::{DhcpOption, Message, Opcode, UnknownOption};
    use dhcproto::{Encodable, Encoder};
    let mut msg = Message::default();
    msg.set_opcode(Opcode::BootRequest)
        .set_xid(rand::random())
        .set_chaddr(&mac)
        .set_ciaddr(ciaddr);
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00007:UNDI:003016".to_vec(),
    ));
    opts.insert(DhcpOption::Unknown(UnknownOption::new(
        93.into(),
        vec![0, 7],
    )));
    opts.insert(DhcpOption::Unknown(UnknownOption::new(
        97.into(),
        [0u8; 17].to_vec(),
    )));
    if let Some(ip) = requested {
        opts.insert(DhcpOption::RequestedIpAddress(ip));
    }
    let mut buf = Vec::new();
    msg.encode(&mut Encoder::new(&mut buf)).unwrap();
    buf
}

pub async fn send(to: SocketAddr, packet: &[u8]) {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(packet, to).await.unwrap();
}

impl Appliance {
    /// What a machine's firmware does first when bootplane is the LAN's DHCP server: a REQUEST
    /// for `ip`, retransmitted (as firmware does) until bootplane's ACK binding `ip` to `mac`
    /// is in the event log. Needs `dhcp_mode` full.
    pub async fn lease(&self, mac: Mac, ip: Ipv4Addr) {
        let dhcp = self.dhcp.expect("the appliance serves DHCP");
        let deadline = Instant::now() + Duration::from_secs(10);
        let bound = format!("ip={ip}");
        loop {
            send(
                dhcp,
                &pxe_packet(
                    dhcproto::v4::MessageType::Request,
                    mac.0,
                    Ipv4Addr::UNSPECIFIED,
                    Some(ip),
                ),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let events = self.db.events(mac, 1000).await.unwrap();
            if events
                .iter()
                .any(|e| e.kind == EventKind::DhcpAck && e.detail.contains(&bound))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no lease of {ip} for {mac}: {events:#?}"
            );
        }
    }
}
