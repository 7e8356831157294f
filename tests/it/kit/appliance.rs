//! A running appliance on loopback ephemeral ports, for black-box tests with real clients.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use bootplane::app::{self, Listeners};
use bootplane::config::{Config, DhcpMode, PortSetting, ServeOptions};
use bootplane::db::Db;
use bootplane::model::{Event, EventKind, Mac};
use bootplane::net::InterfaceInfo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::dhcp::{pxe_packet, send};
use super::http::{no_redirects, session_cookie, Session};
use super::turns::{self, Shared};
use super::{pattern, ADMIN_PASSWORD, VERSION};

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
    /// Held while the appliance runs: heavy tests wait for it (`turns`).
    _turn: Shared,
}

impl Appliance {
    pub async fn start() -> Appliance {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(customise: impl FnOnce(&mut ServeOptions)) -> Appliance {
        let data = tempfile::tempdir().unwrap();
        let images = tempfile::tempdir().unwrap();
        Self::start_in(data, images, customise).await
    }

    /// An appliance on data and images directories a test prepared (a database written and
    /// boot assets stored before the appliance starts).
    pub async fn start_in(
        data: tempfile::TempDir,
        images: tempfile::TempDir,
        customise: impl FnOnce(&mut ServeOptions),
    ) -> Appliance {
        let turn = turns::shared_async().await;
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
            _turn: turn,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// The body of a plain GET of `path` over HTTP.
    pub async fn text(&self, path: &str) -> String {
        reqwest::get(self.url(path))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `/metrics` as it reads now.
    pub async fn metrics(&self) -> String {
        self.text("/metrics").await
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
