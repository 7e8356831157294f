//! The Talos side of a test: one secrets bundle, and a cluster the Talos doubles trust.

use std::net::Ipv4Addr;
use std::path::Path;

use bootplane::db::Db;
use bootplane::model::Machine;

use super::{now_ms, VERSION};

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

/// Initialises the default cluster with the shared bundle (so Talos doubles and bootplane trust
/// the same OS CA), its VIP 127.0.`net`.10 as the endpoint, and adds `machines`. The doubles of
/// each test sit on a loopback /24 of their own, 127.0.`net`.0 (every test picks its own `net`:
/// they all run in one process).
pub async fn init_lab_cluster(db: &Db, name: Option<&str>, net: u8, machines: &[&Machine]) {
    let mut c = db.get_cluster(None).await.unwrap().unwrap();
    if let Some(name) = name {
        c.name = name.into();
    }
    let vip = Ipv4Addr::new(127, 0, net, 10);
    c.endpoint = Some(format!("https://{vip}:6443"));
    c.vip = Some(vip);
    c.talos_version = Some(VERSION.into());
    db.init_cluster("default", &c, &cached_bundle().to_yaml(), now_ms())
        .await
        .unwrap();
    for m in machines {
        db.add_machine(m, now_ms()).await.unwrap();
    }
}
