use super::*;
use crate::model::lifecycle::{transition, Step};
use crate::model::{
    BootstrapResult, Cluster, EventKind, LanFacts, Lifecycle, Machine, NodeSubnets, PatchRecord,
    PatchScope, ReportTargets,
};

/// What a durable commit costs beside the pool's ordinary one, on this disk. A benchmark
/// (its figures are in the commit that made the bootstrap records durable), not a timed
/// test: `cargo test --release --lib durable_commit_cost -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "benchmark"]
async fn durable_commit_cost() {
    let dir = tempfile::tempdir_in(".").unwrap();
    let db = Db::open(dir.path()).await.unwrap();
    let mut c = db.get_cluster(None).await.unwrap().unwrap();
    c.name = "bench".into();
    db.init_cluster("default", &c, "secrets", 1).await.unwrap();
    let mac: Mac = "52:54:00:00:00:01".parse().unwrap();
    db.decide_bootstrap("bench", 1, mac, Ipv4Addr::LOCALHOST, 1)
        .await
        .unwrap();
    const N: u32 = 300;
    let started = std::time::Instant::now();
    for i in 0..N {
        let mut tx = db.write_tx().await.unwrap();
        sqlx::query("UPDATE bootstraps SET called_at = ? WHERE generation = 1")
            .bind(i64::from(i))
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let normal = started.elapsed() / N;
    let started = std::time::Instant::now();
    for i in 0..N {
        db.bootstrap_calling("bench", 1, i64::from(i))
            .await
            .unwrap();
    }
    let full = started.elapsed() / N;
    println!(
        "commit of the bootstrap call mark: synchronous=NORMAL {normal:?}, durable (FULL) {full:?}"
    );
}
use crate::model::Role;

fn mac(s: &str) -> Mac {
    s.parse().unwrap()
}

async fn fresh() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).await.unwrap();
    (dir, db)
}

#[tokio::test]
async fn a_batch_of_observations_reads_as_if_applied_one_by_one() {
    let (_dir, db) = fresh().await;
    let (a, b) = (mac("52:54:00:00:00:0a"), mac("52:54:00:00:00:0b"));
    let obs =
        |m: Mac, at: i64, kind: EventKind, arch: Option<u16>, serial: Option<&str>| Observation {
            mac: m,
            at,
            kind,
            detail: format!("at {at}"),
            arch,
            smbios_uuid: None,
            serial: serial.map(String::from),
        };
    db.record(&[obs(a, 10, EventKind::DhcpOffer, Some(0), None)])
        .await
        .unwrap();
    let batch: Vec<Observation> = (0..250)
        .map(|i| match i % 3 {
            0 => obs(a, 20 + i, EventKind::DhcpAck, Some(7), None),
            1 => obs(b, 20 + i, EventKind::ProxyOffer, None, Some("s1")),
            _ => obs(b, 20 + i, EventKind::ScriptServed, Some(7), None),
        })
        .collect();
    db.record(&batch).await.unwrap();
    let ma = db.get_machine(a).await.unwrap().unwrap();
    assert_eq!(
        (ma.first_seen, ma.last_seen, ma.last_arch),
        (Some(10), Some(269), Some(7))
    );
    let mb = db.get_machine(b).await.unwrap().unwrap();
    assert_eq!((mb.first_seen, mb.last_seen), (Some(21), Some(268)));
    assert_eq!((mb.last_arch, mb.serial.as_deref()), (Some(7), Some("s1")));
    let ea = db.events(a, 1000).await.unwrap();
    assert_eq!(ea.len(), 1 + 1 + 84);
    assert_eq!(ea[0].kind, EventKind::Discovered);
    assert!(ea[1..].iter().all(|e| e.kind != EventKind::Discovered));
    let eb = db.events(b, 1000).await.unwrap();
    assert_eq!(eb.len(), 1 + 166);
    assert_eq!((eb[0].kind, eb[0].at), (EventKind::Discovered, 21));
    assert_eq!(
        (eb[1].kind, eb[1].detail.as_str()),
        (EventKind::ProxyOffer, "at 21")
    );
    assert_eq!(eb.last().unwrap().detail, "at 268");
}

fn assigned(m: &str, host: &str, ip: &str) -> Machine {
    let mut machine = Machine::discovered(mac(m));
    machine.role = Role::Controlplane;
    machine.hostname = Some(host.into());
    machine.ip = Some(ip.parse().unwrap());
    machine.dns = vec![Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(9, 9, 9, 9)];
    machine
}

#[tokio::test]
async fn machine_round_trips_through_sqlite() {
    let (_dir, db) = fresh().await;
    let mut m = assigned("52:54:00:00:00:01", "cp-1", "10.0.0.11/24");
    m.talos_version = Some("v1.10.9".into());
    db.add_machine(&m, 5).await.unwrap();
    let got = db.get_machine(m.mac).await.unwrap().unwrap();
    let expected = Machine {
        state: Lifecycle::Assigned,
        state_since: Some(5),
        ..m.clone()
    };
    assert_eq!(got, expected);
    assert!(matches!(
        db.add_machine(&m, 6).await,
        Err(DbError::Exists(_))
    ));
}

#[tokio::test]
async fn duplicate_hostname_and_ip_are_refused_with_the_owner() {
    let (_dir, db) = fresh().await;
    db.add_machine(&assigned("52:54:00:00:00:01", "cp-1", "10.0.0.11/24"), 1)
        .await
        .unwrap();
    let err = db
        .add_machine(&assigned("52:54:00:00:00:02", "cp-1", "10.0.0.12/24"), 1)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "hostname cp-1 is already used by 52:54:00:00:00:01"
    );
    let err = db
        .add_machine(&assigned("52:54:00:00:00:02", "cp-2", "10.0.0.11/24"), 1)
        .await
        .unwrap_err();
    assert!(matches!(err, DbError::IpTaken { .. }), "{err}");
    assert_eq!(db.list_machines().await.unwrap().len(), 1);
}

#[tokio::test]
async fn observations_discover_unknown_machines_and_log_events() {
    let (_dir, db) = fresh().await;
    let m = mac("52:54:00:00:00:09");
    let obs = Observation {
        mac: m,
        at: 100,
        kind: EventKind::ProxyOffer,
        detail: "file undionly.kpxe".into(),
        arch: Some(7),
        smbios_uuid: Some("7e57ab1e-0000-4000-8000-000000000001".into()),
        serial: None,
    };
    db.record(&[obs.clone(), Observation { at: 200, ..obs }])
        .await
        .unwrap();
    let machine = db.get_machine(m).await.unwrap().unwrap();
    assert_eq!(machine.role, Role::Unassigned);
    assert_eq!(machine.first_seen, Some(100));
    assert_eq!(machine.last_seen, Some(200));
    assert_eq!(machine.last_arch, Some(7));
    // Discovered since it was first seen (the UI says "waiting for a role since …", not "never").
    assert_eq!(machine.state_since, Some(100));
    let kinds: Vec<_> = db
        .events(m, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        vec![
            EventKind::Discovered,
            EventKind::ProxyOffer,
            EventKind::ProxyOffer
        ]
    );
}

fn seen_at(m: Mac, at: i64) -> Observation {
    Observation {
        mac: m,
        at,
        kind: EventKind::ProxyOffer,
        detail: String::new(),
        arch: Some(7),
        smbios_uuid: None,
        serial: None,
    }
}

#[tokio::test]
async fn unclaimed_machines_beyond_the_cap_go_oldest_seen_first_with_their_events() {
    let (_dir, db) = fresh().await;
    // Claimed: assigned, or written by an operator while unassigned. Never pruned.
    let worker = assigned("52:54:00:00:01:01", "w-1", "10.0.0.21/24");
    db.add_machine(&worker, 1).await.unwrap();
    let kept = Machine::discovered(mac("52:54:00:00:01:02"));
    db.add_machine(&kept, 1).await.unwrap();
    let strangers: Vec<Mac> = (1..=5)
        .map(|i| mac(&format!("02:00:00:00:00:0{i}")))
        .collect();
    for (i, m) in strangers.iter().enumerate() {
        db.record_capped(&[seen_at(*m, 10 + i as i64)], 3)
            .await
            .unwrap();
        if i == 2 {
            // The first discovered, seen again: it outlives later ones.
            db.record_capped(&[seen_at(strangers[0], 50)], 3)
                .await
                .unwrap();
        }
    }
    db.record_capped(&[seen_at(mac("02:00:00:00:00:06"), 101)], 3)
        .await
        .unwrap();
    let left: Vec<Mac> = db
        .list_machines()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.mac)
        .collect();
    assert_eq!(left.len(), 2 + 3, "{left:?}");
    for m in [worker.mac, kept.mac, strangers[0], strangers[4]] {
        assert!(left.contains(&m), "{m} was pruned: {left:?}");
    }
    for m in &strangers[1..4] {
        assert!(!left.contains(m), "{m} was kept: {left:?}");
        assert!(
            db.events(*m, 10).await.unwrap().is_empty(),
            "{m}'s events kept"
        );
    }
    assert_eq!(db.events(strangers[0], 10).await.unwrap().len(), 3);
    assert_eq!(db.events(kept.mac, 10).await.unwrap().len(), 1);
    let assigned: Vec<Mac> = db
        .list_assigned_machines()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.mac)
        .collect();
    assert_eq!(assigned, vec![worker.mac]);
}

#[tokio::test]
async fn a_flood_of_new_macs_keeps_at_most_the_cap() {
    let (_dir, db) = fresh().await;
    let flood: Vec<Observation> = (0..DISCOVERED_CAP + 50)
        .map(|i| {
            let b = i.to_be_bytes();
            seen_at(Mac([2, 0, 0, b[5], b[6], b[7]]), i)
        })
        .collect();
    db.record(&flood[..600]).await.unwrap();
    db.record(&flood[600..]).await.unwrap();
    let machines = db.list_machines().await.unwrap();
    assert_eq!(machines.len() as i64, DISCOVERED_CAP);
    assert!(machines.iter().all(|m| m.last_seen >= Some(50)));
}

/// Each machine's MAC and how many events it has, in MAC order.
async fn machines_and_events(db: &Db) -> Vec<(Mac, usize)> {
    let mut out = Vec::new();
    for m in db.list_machines().await.unwrap() {
        out.push((m.mac, db.events(m.mac, 100).await.unwrap().len()));
    }
    out.sort();
    out
}

#[tokio::test]
async fn new_machines_the_cap_would_prune_at_once_are_never_stored() {
    // A flood with ties in time (so the MAC decides) and repeated sightings (so a machine's
    // last sighting, not its first, ranks it).
    let flood: Vec<Observation> = (0..2_500i64)
        .map(|i| {
            let n = (i * 7_919) % 1_250;
            let b = n.to_be_bytes();
            seen_at(Mac([2, 0, 1, b[5], b[6], b[7]]), 1_000 + i / 9)
        })
        .collect();
    let (_one, skipping) = fresh().await;
    let before = skipping.inventory_version().await.unwrap();
    skipping.record_capped(&flood, 5).await.unwrap();
    // One insert per machine kept and nothing deleted: the others were never stored.
    assert_eq!(skipping.inventory_version().await.unwrap() - before, 5);
    // The same batch stored whole, then pruned: what the cap means.
    let (_two, storing) = fresh().await;
    storing.record_capped(&flood, i64::MAX).await.unwrap();
    assert_eq!(storing.list_machines().await.unwrap().len(), 1_250);
    let mut tx = storing.write_tx().await.unwrap();
    super::events::prune_unclaimed(&mut tx, 5).await.unwrap();
    tx.commit().await.unwrap();
    let kept = machines_and_events(&skipping).await;
    assert_eq!(kept.len(), 5);
    assert_eq!(kept, machines_and_events(&storing).await);
    // Two sightings each, after the `discovered` event.
    assert!(kept.iter().all(|(_, events)| *events == 3), "{kept:?}");
}

#[tokio::test]
async fn a_removed_machine_that_boots_again_in_a_flood_is_kept() {
    let (_dir, db) = fresh().await;
    // An operator added and then removed it: its `changed` events stay, so it is claimed.
    let returning = Machine::discovered(mac("02:00:04:00:00:01"));
    db.add_machine(&returning, 1).await.unwrap();
    db.remove_machine(returning.mac, 2).await.unwrap();
    // It boots again amid strangers, seen before all of them: last by the cap's order.
    let mut flood = vec![seen_at(returning.mac, 100)];
    flood.extend((0..50i64).map(|i| {
        let b = i.to_be_bytes();
        seen_at(Mac([2, 0, 5, b[5], b[6], b[7]]), 200 + i)
    }));
    db.record_capped(&flood, 3).await.unwrap();
    let left: Vec<Mac> = machines_and_events(&db)
        .await
        .into_iter()
        .map(|(m, _)| m)
        .collect();
    let mut want = vec![returning.mac, flood[48].mac, flood[49].mac, flood[50].mac];
    want.sort();
    assert_eq!(
        left, want,
        "the claimed machine was dropped or took a stranger's place"
    );
}

#[tokio::test]
async fn a_cut_of_thousands_of_unclaimed_machines_takes_their_events_too() {
    let (_dir, db) = fresh().await;
    // More stored strangers than one pruning DELETE names: the cut spans several.
    let flood: Vec<Observation> = (0..2_500i64)
        .map(|i| {
            let b = i.to_be_bytes();
            seen_at(Mac([2, 0, 2, b[5], b[6], b[7]]), 1_000 + i)
        })
        .collect();
    db.record_capped(&flood, i64::MAX).await.unwrap();
    let newcomer = seen_at(mac("02:00:03:00:00:01"), 9_000);
    db.record_capped(std::slice::from_ref(&newcomer), 3)
        .await
        .unwrap();
    let left: Vec<Mac> = machines_and_events(&db)
        .await
        .into_iter()
        .map(|(m, _)| m)
        .collect();
    let mut want = vec![flood[2_498].mac, flood[2_499].mac, newcomer.mac];
    want.sort();
    assert_eq!(left, want);
    for obs in [&flood[0], &flood[1_200], &flood[2_497]] {
        assert!(
            db.events(obs.mac, 10).await.unwrap().is_empty(),
            "{}",
            obs.mac
        );
    }
}

#[tokio::test]
async fn leases_persist_and_steal_stale_addresses() {
    let (dir, db) = fresh().await;
    let a = LeaseRow {
        mac: mac("52:54:00:00:00:01"),
        ip: Ipv4Addr::new(10, 0, 0, 100),
        expires_at: 10,
        hostname: None,
    };
    let b = LeaseRow {
        mac: mac("52:54:00:00:00:02"),
        ..a.clone()
    };
    db.save_leases(&[(a.mac, Some(a.clone()))]).await.unwrap();
    db.save_leases(&[(b.mac, Some(b.clone()))]).await.unwrap();
    db.close().await;
    let db = Db::open(dir.path()).await.unwrap();
    assert_eq!(db.load_leases().await.unwrap(), vec![b.clone()]);
    db.save_leases(&[(b.mac, None)]).await.unwrap();
    assert!(db.load_leases().await.unwrap().is_empty());
}

#[tokio::test]
async fn one_lease_batch_swaps_moves_and_releases_like_the_table_does() {
    let (dir, db) = fresh().await;
    let lease = |n: u32, ip: u32, host: Option<&str>| LeaseRow {
        mac: mac(&format!(
            "52:54:00:{:02x}:{:02x}:{:02x}",
            n >> 16,
            (n >> 8) & 0xff,
            n & 0xff
        )),
        ip: Ipv4Addr::from(0x0a00_0000 + ip),
        expires_at: i64::from(n) * 7,
        hostname: host.map(str::to_owned),
    };
    // Thousands in one commit, as a storm's group commit carries.
    let first: Vec<LeaseRow> = (1..=3000).map(|n| lease(n, n, None)).collect();
    let batch: Vec<_> = first.iter().map(|l| (l.mac, Some(l.clone()))).collect();
    db.save_leases(&batch).await.unwrap();
    assert_eq!(db.load_leases().await.unwrap().len(), 3000);
    // In one batch: 1 and 2 swap addresses, 3 is released and its address goes to a new MAC
    // (9,001), 4 keeps its address with a new expiry and a hostname with a quote in it.
    let changed = vec![
        (
            first[0].mac,
            Some(LeaseRow {
                ip: first[1].ip,
                ..first[0].clone()
            }),
        ),
        (
            first[1].mac,
            Some(LeaseRow {
                ip: first[0].ip,
                ..first[1].clone()
            }),
        ),
        (first[2].mac, None),
        (lease(9001, 3, None).mac, Some(lease(9001, 3, None))),
        (
            first[3].mac,
            Some(LeaseRow {
                expires_at: 99,
                ..lease(4, 4, Some("node \"4\""))
            }),
        ),
    ];
    db.save_leases(&changed).await.unwrap();
    db.close().await;
    let db = Db::open(dir.path()).await.unwrap();
    let stored = db.load_leases().await.unwrap();
    assert_eq!(stored.len(), 3000, "one released, one new");
    let find = |m: Mac| stored.iter().find(|l| l.mac == m).cloned();
    assert_eq!(find(first[0].mac).unwrap().ip, first[1].ip);
    assert_eq!(find(first[1].mac).unwrap().ip, first[0].ip);
    assert_eq!(find(first[2].mac), None);
    assert_eq!(find(lease(9001, 3, None).mac), Some(lease(9001, 3, None)));
    assert_eq!(
        find(first[3].mac),
        Some(LeaseRow {
            expires_at: 99,
            ..lease(4, 4, Some("node \"4\""))
        })
    );
    assert_eq!(find(first[2999].mac), Some(first[2999].clone()));
}

#[tokio::test]
async fn remove_keeps_history() {
    let (_dir, db) = fresh().await;
    let m = assigned("52:54:00:00:00:01", "cp-1", "10.0.0.11/24");
    db.add_machine(&m, 1).await.unwrap();
    db.remove_machine(m.mac, 2).await.unwrap();
    assert!(db.get_machine(m.mac).await.unwrap().is_none());
    // added, state discovered -> assigned, removed
    assert_eq!(db.events(m.mac, 10).await.unwrap().len(), 3);
    assert!(matches!(
        db.remove_machine(m.mac, 3).await,
        Err(DbError::NotFound(_))
    ));
}

#[tokio::test]
async fn database_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, _db) = fresh().await;
    let mode = std::fs::metadata(dir.path().join(DB_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

fn cluster(name: &str) -> Cluster {
    Cluster {
        name: name.into(),
        endpoint: Some("https://10.0.0.5:6443".into()),
        vip: Some(Ipv4Addr::new(10, 0, 0, 5)),
        talos_version: Some("v1.11.6".into()),
        kubernetes_version: None,
        install_image: None,
        pod_subnets: vec!["10.244.0.0/16".into()],
        service_subnets: vec!["10.96.0.0/12".into()],
        dns_domain: "cluster.local".into(),
        node_subnets: NodeSubnets::Auto,
        nameservers: vec![],
        initialised_at: None,
        generation: 1,
        single_controlplane: false,
        bootstrapped_at: None,
    }
}

#[tokio::test]
async fn cluster_init_renames_once_and_keeps_secrets_apart() {
    let (_dir, db) = fresh().await;
    let before = db.get_cluster(None).await.unwrap().unwrap();
    assert_eq!(before.name, "default");
    assert!(before.initialised_at.is_none());
    db.init_cluster("default", &cluster("homelab"), "secrets: x", 7)
        .await
        .unwrap();
    let after = db.get_cluster(Some("homelab")).await.unwrap().unwrap();
    assert_eq!(after.initialised_at, Some(7));
    assert_eq!(after.vip, Some(Ipv4Addr::new(10, 0, 0, 5)));
    assert_eq!(
        db.cluster_secrets("homelab").await.unwrap().as_deref(),
        Some("secrets: x")
    );
    let again = db
        .init_cluster("homelab", &cluster("homelab"), "other", 8)
        .await
        .unwrap_err();
    assert!(matches!(again, DbError::ClusterInitialised(_)), "{again}");
    assert_eq!(
        db.cluster_secrets("homelab").await.unwrap().as_deref(),
        Some("secrets: x")
    );
    // Machines follow the rename: they reference the cluster by id.
    let mut m = Machine::discovered(mac("52:54:00:00:00:01"));
    m.cluster = "homelab".into();
    db.add_machine(&m, 9).await.unwrap();
    assert_eq!(
        db.get_machine(m.mac).await.unwrap().unwrap().cluster,
        "homelab"
    );
}

#[tokio::test]
async fn node_subnets_nameservers_and_report_targets_round_trip() {
    let (_dir, db) = fresh().await;
    let fresh_cluster = db.get_cluster(None).await.unwrap().unwrap();
    assert_eq!(fresh_cluster.node_subnets, NodeSubnets::Auto);
    assert!(fresh_cluster.nameservers.is_empty());
    for subnets in [
        NodeSubnets::Off,
        NodeSubnets::Given(vec!["10.0.0.0/24".into(), "fd00::/64".into()]),
        NodeSubnets::Auto,
    ] {
        let mut c = cluster("default");
        c.node_subnets = subnets.clone();
        c.nameservers = vec![Ipv4Addr::new(10, 0, 0, 53), Ipv4Addr::new(10, 0, 0, 54)];
        db.update_cluster("default", &c).await.unwrap();
        let back = db.get_cluster(None).await.unwrap().unwrap();
        assert_eq!(
            (back.node_subnets, back.nameservers),
            (subnets, c.nameservers)
        );
    }
    assert_eq!(db.report_targets().await.unwrap(), ReportTargets::default());
    let targets = ReportTargets {
        events_endpoint: Some("10.0.0.1:4002".into()),
        kernel_log_url: None,
    };
    assert_eq!(db.lan_facts().await.unwrap(), None);
    let lan = LanFacts {
        subnet: "10.0.0.1/24".parse().unwrap(),
        pool: Some((Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 199))),
        own: vec![Ipv4Addr::new(10, 0, 0, 1)],
    };
    db.set_appliance_facts(&targets, &lan, 5).await.unwrap();
    assert_eq!(db.report_targets().await.unwrap(), targets);
    assert_eq!(db.lan_facts().await.unwrap(), Some(lan));
}

#[tokio::test]
async fn patches_keep_scope_order_and_replace_by_name() {
    let (_dir, db) = fresh().await;
    let p = |scope: PatchScope, mac: Option<Mac>, name: &str, body: &str| PatchRecord {
        scope,
        mac,
        position: 0,
        name: name.into(),
        body: body.into(),
    };
    let m = mac("52:54:00:00:00:01");
    db.put_patch("default", &p(PatchScope::Machine, Some(m), "disk", "a"), 1)
        .await
        .unwrap();
    db.put_patch("default", &p(PatchScope::Worker, None, "w", "b"), 1)
        .await
        .unwrap();
    db.put_patch("default", &p(PatchScope::Cluster, None, "c2", "c"), 1)
        .await
        .unwrap();
    db.put_patch("default", &p(PatchScope::Cluster, None, "c1", "d"), 1)
        .await
        .unwrap();
    db.put_patch("default", &p(PatchScope::Cluster, None, "c2", "e"), 2)
        .await
        .unwrap();
    let got: Vec<(String, String)> = db
        .list_patches("default")
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.name, p.body))
        .collect();
    let want = [("c2", "e"), ("c1", "d"), ("w", "b"), ("disk", "a")];
    assert_eq!(
        got,
        want.map(|(a, b)| (a.to_string(), b.to_string())).to_vec()
    );
    db.remove_patch("default", PatchScope::Cluster, None, "c1")
        .await
        .unwrap();
    assert!(db
        .remove_patch("default", PatchScope::Cluster, None, "c1")
        .await
        .is_err());
}

#[tokio::test]
async fn the_first_bootstrap_decision_of_a_generation_sticks() {
    let (_dir, db) = fresh().await;
    let a = mac("52:54:00:00:00:01");
    let b = mac("52:54:00:00:00:02");
    let first = db
        .decide_bootstrap("default", 1, a, Ipv4Addr::new(10, 0, 0, 11), 5)
        .await
        .unwrap();
    let second = db
        .decide_bootstrap("default", 1, b, Ipv4Addr::new(10, 0, 0, 12), 6)
        .await
        .unwrap();
    assert_eq!(first, second);
    assert_eq!(second.target_mac, a);
    db.bootstrap_calling("default", 1, 7).await.unwrap();
    let marked = db.get_bootstrap("default", 1).await.unwrap().unwrap();
    assert_eq!((marked.called_at, marked.calls), (Some(7), 1));
    db.finish_bootstrap("default", 1, BootstrapResult::Bootstrapped, "ok", 8)
        .await
        .unwrap();
    // A finished generation is not marked again.
    db.bootstrap_calling("default", 1, 9).await.unwrap();
    let done = db.get_bootstrap("default", 1).await.unwrap().unwrap();
    assert_eq!(
        (done.calls, done.outcome.map(|o| o.as_str())),
        (1, Some("bootstrapped"))
    );
    assert!(db.new_generation("default", 1).await.unwrap());
    assert!(
        !db.new_generation("default", 1).await.unwrap(),
        "stale generation"
    );
    let c = db.get_cluster(None).await.unwrap().unwrap();
    assert_eq!((c.generation, c.bootstrapped_at), (2, None));
    assert!(db.get_bootstrap("default", 2).await.unwrap().is_none());
}

#[test]
fn operator_edits_move_the_lifecycle() {
    let state_after_edit = |old: Lifecycle, m: &Machine| {
        transition(old, m.installed, Step::Edited { role: m.role }).unwrap()
    };
    let mut m = Machine::discovered(mac("52:54:00:00:00:01"));
    assert_eq!(
        state_after_edit(Lifecycle::Discovered, &m),
        Lifecycle::Discovered
    );
    m.role = Role::Worker;
    assert_eq!(
        state_after_edit(Lifecycle::Discovered, &m),
        Lifecycle::Assigned
    );
    assert_eq!(state_after_edit(Lifecycle::Booting, &m), Lifecycle::Booting);
    assert_eq!(state_after_edit(Lifecycle::Ready, &m), Lifecycle::Assigned);
    m.installed = true;
    assert_eq!(state_after_edit(Lifecycle::Ready, &m), Lifecycle::Ready);
    assert_eq!(
        state_after_edit(Lifecycle::Booting, &m),
        Lifecycle::Installed
    );
    m.role = Role::Unassigned;
    assert_eq!(
        state_after_edit(Lifecycle::Ready, &m),
        Lifecycle::Discovered
    );
}

/// A small tmpfs mounted over a fresh directory; unmounted on drop, so a failing test
/// leaves no mount behind.
struct SmallFs(tempfile::TempDir);

impl SmallFs {
    fn mount(size: &str) -> SmallFs {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "BOOTPLANE_E2E=1 needs root (mount -t tmpfs)"
        );
        SmallFs(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

/// Writes a file until the filesystem refuses with ENOSPC.
fn fill(file: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(file).unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    loop {
        if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_all()) {
            assert_eq!(e.raw_os_error(), Some(nix::libc::ENOSPC), "{e}");
            return;
        }
    }
}

/// One disk-full episode used to leave a pooled connection inside a transaction (SQLite
/// rolled it back itself, sqlx's ROLLBACK then failed), and every later write on it failed
/// with "attempted to call begin_with at non-zero transaction depth" until a restart.
#[tokio::test]
async fn writes_succeed_again_once_a_full_disk_has_space() {
    if std::env::var("BOOTPLANE_E2E").as_deref() != Ok("1") {
        println!("skipped: set BOOTPLANE_E2E=1 (mounts a small tmpfs, so root)");
        return;
    }
    let fs = SmallFs::mount("12m");
    let data = fs.path().join("data");
    let db = Db::open(&data).await.unwrap();
    let seen = |m: Mac, at: i64, detail: String| Observation {
        mac: m,
        at,
        kind: EventKind::ProxyOffer,
        detail,
        arch: Some(7),
        smbios_uuid: None,
        serial: None,
    };
    let before = mac("52:54:00:00:00:01");
    db.record(&[seen(before, 1, "before".into())])
        .await
        .unwrap();
    let user = db.put_user("admin", "$argon2id$test", 1).await.unwrap();

    let filler = fs.path().join("filler");
    fill(&filler);
    // Far more than any WAL space left over from earlier writes: this write must fail.
    let lost = mac("52:54:00:00:00:02");
    let big: Vec<Observation> = (0..64)
        .map(|i| seen(lost, 10 + i, "x".repeat(64 * 1024)))
        .collect();
    let err = db.record(&big).await.unwrap_err();
    assert!(err.to_string().contains("full"), "{err}");
    // More failures while the disk is full, through every pooled connection.
    for i in 0..8 {
        assert!(
            db.record(&big[..8]).await.is_err(),
            "write {i} on a full disk"
        );
    }

    std::fs::remove_file(&filler).unwrap();
    // Every connection of the pool is used again; none may still think it is inside a
    // transaction.
    let after = mac("52:54:00:00:00:03");
    for i in 0..16 {
        db.record(&[seen(after, 100 + i, format!("after {i}"))])
            .await
            .unwrap();
    }
    let batches: Vec<[Observation; 1]> = (0..8)
        .map(|i| [seen(after, 200 + i, "concurrent".into())])
        .collect();
    let writes = batches.iter().map(|batch| db.record(batch));
    for result in futures::future::join_all(writes).await {
        result.unwrap();
    }
    let digest = "d".repeat(64);
    db.create_session(&digest, user, "csrf", 300, 400)
        .await
        .unwrap();
    assert_eq!(
        db.session(&digest, 301).await.unwrap().unwrap().user_id,
        user
    );

    // Nothing stored before the episode was lost, nothing of the failed writes was kept.
    let kinds: Vec<_> = db.events(before, 10).await.unwrap();
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    assert_eq!(kinds[1].detail, "before");
    assert!(db.get_machine(lost).await.unwrap().is_none());
    assert_eq!(db.events(after, 100).await.unwrap().len(), 1 + 16 + 8);
    db.close().await;
    let db = Db::open(&data).await.unwrap();
    assert_eq!(db.list_machines().await.unwrap().len(), 2);
    assert!(db.user_by_name("admin").await.unwrap().is_some());
    db.close().await;
}
