//! Operator actions shared by the web UI, the JSON API and the CLI: validation with errors
//! per field, and the writes behind them. Handlers stay thin; rules live here once.

pub mod cluster;
pub mod images;
pub mod materials;

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::config::Pool;
use crate::db::{Db, DbError};
use crate::model::{
    validate_hostname, DiskHandoff, EfiBinary, Ipv4Cidr, Lifecycle, Mac, Machine, Role,
};
use materials::MaterialsError;

/// A problem with one input field (`field` is the form/JSON name, e.g. `ip`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("{}", summary(.0))]
    Invalid(Vec<FieldError>),
    /// The change is allowed but has consequences the operator must confirm.
    #[error("{0}")]
    NeedsConfirmation(String),
    #[error("machine {0} is not in the inventory")]
    NotFound(Mac),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

fn summary(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

impl OpsError {
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        OpsError::Invalid(vec![FieldError {
            field: field.into(),
            message: message.into(),
        }])
    }

    /// The errors of one field, for showing beside it.
    pub fn for_field(&self, field: &str) -> Option<String> {
        match self {
            OpsError::Invalid(errors) => {
                let msgs: Vec<&str> = errors
                    .iter()
                    .filter(|e| e.field == field)
                    .map(|e| e.message.as_str())
                    .collect();
                (!msgs.is_empty()).then(|| msgs.join("; "))
            }
            _ => None,
        }
    }
}

/// Collects field errors.
#[derive(Debug, Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    fn has(&self, field: &str) -> bool {
        self.0.iter().any(|e| e.field == field)
    }

    fn into_result(self) -> Result<(), OpsError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(OpsError::Invalid(self.0))
        }
    }
}

/// The LAN rules a static address must follow.
#[derive(Clone, Debug)]
pub struct Lan {
    /// The subnet bootplane serves (full mode) or sits on (proxy mode).
    pub subnet: Ipv4Cidr,
    /// Full mode's dynamic pool: static addresses must stay out of it.
    pub pool: Option<Pool>,
    /// The appliance's own addresses (the one it advertises, its interface's): no machine
    /// may be given one.
    pub appliance: Vec<Ipv4Addr>,
    /// What `serve` adds to every kernel command line, and the Talos version a machine boots
    /// without a pin or a cluster version: a machine's whole command line is checked with them.
    pub kernel: crate::talos::kernel::Additions,
    pub default_version: String,
}

impl Lan {
    pub fn from_config(config: &crate::config::Config) -> Lan {
        Lan {
            kernel: config.boot.kernel_additions(),
            default_version: config.boot.talos_version.clone(),
            ..Lan::from_facts(&Lan::facts(config))
        }
    }

    /// What `serve` records so the CLI applies the same rules (`Db::lan_facts`).
    pub fn facts(config: &crate::config::Config) -> crate::model::LanFacts {
        let pool = match config.dhcp.mode {
            crate::config::DhcpMode::Full => config.dhcp.pool,
            _ => None,
        };
        let mut own = vec![config.boot.advertise_ip, config.interface.cidr.addr];
        own.dedup();
        crate::model::LanFacts {
            subnet: config.dhcp.subnet,
            pool: pool.map(|p| (p.start, p.end)),
            own,
        }
    }

    /// The LAN the last `serve` recorded, for the CLI: it counts the offline kernel additions
    /// and the default Talos version, as it does not know `serve`'s flags.
    pub fn from_facts(facts: &crate::model::LanFacts) -> Lan {
        Lan {
            subnet: facts.subnet,
            pool: facts.pool.map(|(start, end)| Pool { start, end }),
            appliance: facts.own.clone(),
            kernel: crate::talos::kernel::Additions::offline(),
            default_version: crate::config::DEFAULT_TALOS_VERSION.to_string(),
        }
    }
}

/// Machine fields as an operator types them. `None` leaves a field as it is; an empty string
/// (or "none") clears it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MachineInput {
    /// controlplane, worker or unassigned
    pub role: Option<String>,
    /// One DNS label, e.g. cp-1
    pub hostname: Option<String>,
    /// Static address with prefix, e.g. 192.168.1.21/24
    pub ip: Option<String>,
    /// Default gateway, inside the machine's subnet
    pub gateway: Option<String>,
    /// DNS servers, comma-separated
    pub dns: Option<String>,
    /// Disk Talos installs to, e.g. /dev/sda; empty lets Talos pick the first disk of 6 GiB or
    /// more that is not read-only or a CD drive
    pub install_disk: Option<String>,
    /// exit, http-404 or sanboot
    pub disk_handoff: Option<String>,
    /// ipxe.efi or snponly.efi; empty for the default
    pub efi_binary: Option<String>,
    /// Wipe the install disk when Talos installs
    pub wipe: Option<bool>,
    /// Cluster name (one cluster is the common case)
    pub cluster: Option<String>,
    /// Talos version this machine boots and installs, e.g. v1.10.9; empty (or "none") follows
    /// the cluster's version
    pub talos_version: Option<String>,
    /// Run Talos from the network at every boot, never installed (Talos 1.14 or newer,
    /// workers only)
    pub diskless: Option<bool>,
}

fn cleared(value: &str) -> bool {
    let v = value.trim();
    v.is_empty() || v == "none"
}

/// Parses every given field into `m`, collecting one error per bad field, then checks the rules
/// every stored machine keeps.
pub fn apply_machine_input(m: &mut Machine, f: &MachineInput) -> Result<(), OpsError> {
    let mut errors = Errors::default();
    if let Some(role) = &f.role {
        match role.trim().parse::<Role>() {
            Ok(r) => m.role = r,
            Err(e) => errors.add("role", e.to_string()),
        }
    }
    if let Some(hostname) = &f.hostname {
        let hostname = hostname.trim();
        if cleared(hostname) {
            m.hostname = None;
        } else {
            match validate_hostname(hostname) {
                Ok(()) => m.hostname = Some(hostname.to_string()),
                Err(e) => errors.add("hostname", e),
            }
        }
    }
    if let Some(ip) = &f.ip {
        if cleared(ip) {
            m.ip = None;
        } else {
            match ip.trim().parse::<Ipv4Cidr>() {
                Ok(c) => m.ip = Some(c),
                Err(e) => errors.add("ip", e.to_string()),
            }
        }
    }
    if let Some(gw) = &f.gateway {
        if cleared(gw) {
            m.gateway = None;
        } else {
            match gw.trim().parse::<Ipv4Addr>() {
                Ok(g) => m.gateway = Some(g),
                Err(_) => errors.add("gateway", format!("'{gw}' is not an IPv4 address")),
            }
        }
    }
    if let Some(dns) = &f.dns {
        if cleared(dns) {
            m.dns = Vec::new();
        } else {
            let parsed: Result<Vec<Ipv4Addr>, String> = dns
                .split([',', ' '])
                .filter(|s| !s.trim().is_empty())
                .map(|s| {
                    s.trim()
                        .parse::<Ipv4Addr>()
                        .map_err(|_| format!("'{}' is not an IPv4 address", s.trim()))
                })
                .collect();
            match parsed {
                Ok(list) => m.dns = list,
                Err(e) => errors.add("dns", e),
            }
        }
    }
    if let Some(disk) = &f.install_disk {
        let disk = disk.trim();
        if cleared(disk) {
            m.install_disk = None;
        } else if !disk.starts_with("/dev/") || disk.contains(char::is_whitespace) {
            errors.add(
                "install_disk",
                format!("'{disk}' must be a device path such as /dev/sda"),
            );
        } else {
            m.install_disk = Some(disk.to_string());
        }
    }
    if let Some(handoff) = &f.disk_handoff {
        match handoff.trim().parse::<DiskHandoff>() {
            Ok(h) => m.disk_handoff = h,
            Err(e) => errors.add("disk_handoff", e.to_string()),
        }
    }
    if let Some(efi) = &f.efi_binary {
        if cleared(efi) || efi == "default" {
            m.efi_binary = None;
        } else {
            match efi.trim().parse::<EfiBinary>() {
                Ok(e) => m.efi_binary = Some(e),
                Err(e) => errors.add("efi_binary", e.to_string()),
            }
        }
    }
    if let Some(wipe) = f.wipe {
        m.wipe = wipe;
    }
    if let Some(diskless) = f.diskless {
        m.diskless = diskless;
    }
    if let Some(cluster) = &f.cluster {
        if !cleared(cluster) {
            m.cluster = cluster.trim().to_string();
        }
    }
    if let Some(v) = &f.talos_version {
        let v = v.trim();
        if cleared(v) {
            m.talos_version = None;
        } else {
            match cluster::check_talos_version(v) {
                Ok(()) => m.talos_version = Some(v.to_string()),
                Err(e) => errors.add("talos_version", e),
            }
        }
    }
    check_machine_rules(m, &mut errors);
    errors.into_result()
}

/// Rules every stored machine keeps (fields already parsed).
fn check_machine_rules(m: &Machine, errors: &mut Errors) {
    if m.diskless && m.role == Role::Controlplane && !errors.has("role") {
        errors.add(
            "diskless",
            "a control plane cannot be diskless: it keeps its etcd member's data on its disk, \
             which a diskless machine loses at every reboot; make it a worker, or let it install",
        );
    }
    if m.role != Role::Unassigned {
        if m.hostname.is_none() && !errors.has("hostname") {
            errors.add("hostname", format!("a {} needs a hostname", m.role));
        }
        if m.ip.is_none() && !errors.has("ip") {
            errors.add(
                "ip",
                format!("a {} needs a static address ADDR/PREFIX", m.role),
            );
        }
    }
    if let Some(ip) = m.ip {
        if ip.prefix == 0 || ip.prefix > 30 {
            errors.add("ip", format!("{ip}: the prefix must be /1 to /30"));
        } else if ip.addr == ip.network() || ip.addr == ip.broadcast() {
            errors.add(
                "ip",
                format!("{ip} is the network or broadcast address of its subnet"),
            );
        }
        if let Some(gw) = m.gateway {
            if !ip.contains(gw) {
                errors.add(
                    "gateway",
                    format!(
                        "{gw} is outside the machine's subnet {}/{}",
                        ip.network(),
                        ip.prefix
                    ),
                );
            } else if gw == ip.addr {
                errors.add("gateway", "the gateway cannot be the machine's own address");
            }
        }
    } else if m.gateway.is_some() && !errors.has("ip") {
        errors.add("gateway", "a gateway needs a static address");
    }
}

/// Checks only the stored-machine rules; the CLI uses this after its own parsing.
pub fn check_machine(m: &Machine) -> Result<(), OpsError> {
    let mut errors = Errors::default();
    check_machine_rules(m, &mut errors);
    errors.into_result()
}

/// Rules that need the rest of the inventory and the LAN: unique names and addresses, the
/// subnet and pool, three control planes at most, the VIP, and a config that renders.
pub async fn check_against_inventory(
    db: &Db,
    lan: Option<&Lan>,
    m: &Machine,
    others: &[Machine],
) -> Result<(), OpsError> {
    let mut errors = Errors::default();
    for other in others.iter().filter(|o| o.mac != m.mac) {
        if m.hostname.is_some() && other.hostname == m.hostname {
            errors.add(
                "hostname",
                format!(
                    "{} is already used by {}",
                    other.hostname.as_deref().unwrap_or_default(),
                    other.mac
                ),
            );
        }
        if let (Some(a), Some(b)) = (m.ip, other.ip) {
            if a.addr == b.addr {
                errors.add("ip", format!("{} is already used by {}", a.addr, other.mac));
            }
        }
    }
    if let (Some(lan), Some(ip)) = (lan, m.ip) {
        if lan.appliance.contains(&ip.addr) {
            errors.add(
                "ip",
                format!("{} is this appliance's own address: pick another", ip.addr),
            );
        } else if !lan.subnet.contains(ip.addr) {
            errors.add(
                "ip",
                format!(
                    "{} is outside the LAN subnet {} that bootplane serves",
                    ip.addr, lan.subnet
                ),
            );
        } else if lan.pool.is_some_and(|p| p.contains(ip.addr)) {
            let pool = lan.pool.unwrap_or(Pool {
                start: ip.addr,
                end: ip.addr,
            });
            errors.add(
                "ip",
                format!(
                    "{} is inside the dynamic pool {}-{}: pick an address outside it",
                    ip.addr, pool.start, pool.end
                ),
            );
        }
    }
    if m.role == Role::Controlplane {
        let cps: Vec<&Machine> = others
            .iter()
            .filter(|o| o.mac != m.mac && o.cluster == m.cluster && o.role == Role::Controlplane)
            .collect();
        if cps.len() >= 3 {
            let names: Vec<String> = cps
                .iter()
                .map(|o| o.hostname.clone().unwrap_or_else(|| o.mac.to_string()))
                .collect();
            errors.add(
                "role",
                format!(
                    "the cluster already has three control planes ({}); make this machine a worker",
                    names.join(", ")
                ),
            );
        }
    }
    if m.diskless {
        let cluster_version = db.cluster_talos_version(&m.cluster).await?;
        if let Some(problem) = diskless_version_problem(m, cluster_version.as_deref()) {
            errors.add("diskless", problem);
        }
    }
    if !errors.0.is_empty() {
        return errors.into_result();
    }
    check_command_line(db, lan, m).await?;
    check_renders(db, m).await
}

/// The first Talos line that runs a machine without installing it (no install document).
pub const DISKLESS_SINCE: (u32, u32) = (1, 14);

/// Why diskless machine `m` cannot run the Talos version it would boot (its pin, else
/// `cluster_version`, else bootplane's default), if it cannot.
pub fn diskless_version_problem(m: &Machine, cluster_version: Option<&str>) -> Option<String> {
    let (version, whose) = match (&m.talos_version, cluster_version) {
        (Some(pin), _) => (pin.as_str(), "its pinned version"),
        (None, Some(v)) => (v, "its cluster's version"),
        (None, None) => (crate::config::DEFAULT_TALOS_VERSION, "bootplane's default"),
    };
    let supported =
        crate::talos::minor_version(version).is_some_and(|minor| minor >= DISKLESS_SINCE);
    (!supported).then(|| {
        format!(
            "diskless machines need Talos 1.14 or newer (older Talos installs to disk before it runs); this machine would run Talos {version}, {whose}"
        )
    })
}

/// Refuses an assigned machine whose whole kernel command line (its Talos version's
/// arguments, its assets' schematic, what the appliance adds) would be longer than the kernel
/// keeps, on its version pin when it has one. Without `serve`'s settings (the CLI) the
/// offline additions and the default Talos version are counted.
async fn check_command_line(db: &Db, lan: Option<&Lan>, m: &Machine) -> Result<(), OpsError> {
    use crate::talos::kernel::{Additions, Arch};
    if !m.is_assigned() {
        return Ok(());
    }
    let offline = Additions::offline();
    let (additions, default) = match lan {
        Some(lan) => (&lan.kernel, lan.default_version.as_str()),
        None => (&offline, crate::config::DEFAULT_TALOS_VERSION),
    };
    let version = crate::assets::machine_version(db, m, default).await?;
    // An architecture the machine never showed could be either.
    let arches = match m.last_arch {
        Some(_) => vec![crate::assets::arch_of_client(m.last_arch)],
        None => vec![Arch::Amd64, Arch::Arm64],
    };
    for arch in arches {
        let schematic = db
            .get_image(&version, arch)
            .await?
            .map(|a| a.kernel_args)
            .unwrap_or_default();
        if let Err(e) = additions
            .command_line(&version, arch, m.mac, &schematic)
            .check()
        {
            let field = if m.talos_version.is_some() {
                "talos_version"
            } else {
                "config"
            };
            return Err(OpsError::field(
                field,
                format!("Talos {version} {}: {e}", arch.as_str()),
            ));
        }
    }
    Ok(())
}

/// Refuses a machine whose config would not render, once its cluster is initialised.
async fn check_renders(db: &Db, m: &Machine) -> Result<(), OpsError> {
    if !m.is_assigned() {
        return Ok(());
    }
    let loaded = match materials::load_cluster(db, Some(&m.cluster)).await {
        Ok(l) => l,
        Err(MaterialsError::NotInitialised(_)) => return Ok(()),
        Err(e) => return Err(OpsError::field("cluster", e.to_string())),
    };
    if loaded.cluster.vip.is_some() && m.ip.map(|i| i.addr) == loaded.cluster.vip {
        return Err(OpsError::field("ip", "this is the cluster's VIP address"));
    }
    if let (Role::Controlplane, Some(vip), Some(ip)) = (m.role, loaded.cluster.vip, m.ip) {
        if !ip.contains(vip) {
            return Err(OpsError::field(
                "ip",
                format!(
                    "the cluster's VIP {vip} is outside this address's subnet {}/{}: a control plane needs an address in the VIP's subnet",
                    ip.network(),
                    ip.prefix
                ),
            ));
        }
    }
    if m.talos_version.is_some() {
        let spec = materials::spec_for(&loaded.spec, m);
        crate::talos::config::check_kubernetes_version(
            &spec.talos_version,
            &spec.kubernetes_version,
        )
        .map_err(|e| OpsError::field("talos_version", e.to_string()))?;
    }
    materials::check_cluster(
        &loaded.spec,
        &loaded.secrets,
        &loaded.patches,
        std::slice::from_ref(m),
    )
    .map_err(|e| OpsError::field("config", e.to_string()))
}

/// What a save did.
#[derive(Clone, Debug)]
pub struct Saved {
    pub machine: Machine,
    /// The machine reinstalls at its next network boot.
    pub reinstall: bool,
}

/// Adds (when `create`) or changes a machine. A role change on a control plane of a
/// bootstrapped cluster needs `confirm`: it takes an etcd member away and reinstalls.
pub async fn save_machine(
    db: &Db,
    lan: Option<&Lan>,
    mac: Mac,
    input: &MachineInput,
    create: bool,
    confirm: bool,
    now: i64,
) -> Result<Saved, OpsError> {
    let existing = db.get_machine(mac).await?;
    let old = match (&existing, create) {
        (Some(_), true) => {
            return Err(OpsError::field(
                "mac",
                format!("{mac} is already in the inventory"),
            ))
        }
        (None, false) => return Err(OpsError::NotFound(mac)),
        (Some(m), false) => m.clone(),
        (None, true) => {
            let mut m = Machine::discovered(mac);
            if let Some(first) = db.get_cluster(None).await? {
                m.cluster = first.name;
            }
            m
        }
    };
    let mut m = old.clone();
    apply_machine_input(&mut m, input)?;
    let others = db.list_machines().await?;
    check_against_inventory(db, lan, &m, &others).await?;

    let mut reinstall = false;
    let was_serving_cp = old.role == Role::Controlplane
        && (old.installed || matches!(old.state, Lifecycle::Installed | Lifecycle::Ready));
    if !create && was_serving_cp && m.role != old.role {
        let bootstrapped = db
            .get_cluster(Some(&old.cluster))
            .await?
            .is_some_and(|c| c.bootstrapped_at.is_some());
        if bootstrapped {
            if !confirm {
                return Err(OpsError::NeedsConfirmation(format!(
                    "{} is a control plane of a bootstrapped cluster and holds an etcd member. \
                     Making it {} removes that member (bootplane removes it through a healthy \
                     control plane) and reinstalls the machine at its next network boot: its \
                     disk is wiped. Until a third control plane is back, etcd runs on the \
                     remaining members and cannot lose another.",
                    old.hostname.as_deref().unwrap_or(&mac.to_string()),
                    if m.role == Role::Unassigned {
                        "unassigned".to_string()
                    } else {
                        format!("a {}", m.role)
                    },
                )));
            }
            if m.role != Role::Unassigned {
                reinstall = true;
            }
        }
    }
    let installs_now = !create && installs_now(&old, &m);
    if installs_now {
        reinstall = true;
    }
    if create {
        db.add_machine(&m, now).await?;
    } else {
        db.update_machine(&m, now).await?;
    }
    if reinstall {
        let cause = if installs_now {
            "operator made a diskless machine install to disk"
        } else {
            "operator changed the role of a control plane"
        };
        db.mark_reinstall(mac, cause, now).await?;
    }
    let machine = db.get_machine(mac).await?.ok_or(OpsError::NotFound(mac))?;
    Ok(Saved { machine, reinstall })
}

/// Whether a change from `old` to `new` makes a diskless machine that Talos ran on install to
/// disk: nothing is on its disk, so it is marked for install at its next network boot (a
/// worker: no etcd member is involved).
pub fn installs_now(old: &Machine, new: &Machine) -> bool {
    old.diskless && !new.diskless && new.is_assigned() && old.installed
}

/// Marks an assigned machine for reinstall at its next network boot.
pub async fn reinstall_machine(db: &Db, mac: Mac, now: i64) -> Result<Machine, OpsError> {
    let m = db.get_machine(mac).await?.ok_or(OpsError::NotFound(mac))?;
    if !m.is_assigned() {
        return Err(OpsError::Refused(format!(
            "{mac} has no role; assign it first"
        )));
    }
    db.mark_reinstall(mac, "operator asked for a reinstall", now)
        .await?;
    db.get_machine(mac).await?.ok_or(OpsError::NotFound(mac))
}

/// Marks every assigned machine of the cluster for reinstall; etcd is bootstrapped again.
/// `confirm` must be the cluster's name.
pub async fn rebuild_cluster(db: &Db, confirm: &str, now: i64) -> Result<usize, OpsError> {
    let c = db
        .get_cluster(None)
        .await?
        .ok_or_else(|| DbError::NoCluster("default".into()))?;
    if confirm.trim() != c.name {
        return Err(OpsError::field(
            "confirm",
            format!(
                "type the cluster's name ({}) to confirm the rebuild",
                c.name
            ),
        ));
    }
    let mut count = 0;
    for m in db.list_machines().await? {
        if m.cluster == c.name && m.is_assigned() {
            db.mark_reinstall(m.mac, "operator rebuilds the cluster", now)
                .await?;
            count += 1;
        }
    }
    Ok(count)
}

/// A machine's rendered config: secrets hidden unless `reveal`.
pub async fn rendered_config(db: &Db, mac: Mac, reveal: bool) -> Result<String, OpsError> {
    let m = db.get_machine(mac).await?.ok_or(OpsError::NotFound(mac))?;
    if !m.is_assigned() {
        return Err(OpsError::Refused(format!(
            "{mac} has no role yet: assign it to render its config"
        )));
    }
    let loaded = materials::load_cluster(db, Some(&m.cluster))
        .await
        .map_err(|e| OpsError::Refused(e.to_string()))?;
    let text =
        materials::render_machine(&loaded, &m).map_err(|e| OpsError::Refused(e.to_string()))?;
    if reveal {
        Ok(text)
    } else {
        redact_config(&text).map_err(OpsError::Refused)
    }
}

/// Keys whose values are secret in a rendered Talos machine config.
fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k == "key"
        || k == "token"
        || k == "secret"
        || k.ends_with("secret")
        || k.ends_with("token")
        || k.ends_with("privatekey")
        || k.contains("password")
}

/// A rendered config (one or more YAML documents) with every secret value replaced, for
/// display. Works on the parsed documents, so block scalars and flow styles cannot leak.
pub fn redact_config(yaml: &str) -> Result<String, String> {
    use serde::Deserialize as _;
    let mut out = String::with_capacity(yaml.len());
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(yaml).enumerate() {
        let mut value = serde_yaml_ng::Value::deserialize(doc).map_err(|e| e.to_string())?;
        redact_value(&mut value);
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml_ng::to_string(&value).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

fn redact_value(value: &mut serde_yaml_ng::Value) {
    use serde_yaml_ng::Value;
    match value {
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let secret = k.as_str().is_some_and(is_secret_key);
                if secret && !matches!(v, Value::Mapping(_) | Value::Sequence(_) | Value::Null) {
                    *v = Value::String("[hidden]".into());
                } else {
                    redact_value(v);
                }
            }
        }
        Value::Sequence(items) => items.iter_mut().for_each(redact_value),
        Value::Tagged(t) => redact_value(&mut t.value),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac() -> Mac {
        "52:54:00:00:00:01".parse().unwrap()
    }

    fn cp() -> MachineInput {
        MachineInput {
            role: Some("controlplane".into()),
            hostname: Some("cp-1".into()),
            ip: Some("10.0.0.11/24".into()),
            gateway: Some("10.0.0.1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn every_bad_field_is_reported_beside_its_name() {
        let mut m = Machine::discovered(mac());
        let input = MachineInput {
            role: Some("master".into()),
            hostname: Some("Bad_Name".into()),
            ip: Some("10.0.0.300/24".into()),
            dns: Some("1.1.1.1, x".into()),
            install_disk: Some("sda".into()),
            disk_handoff: Some("reboot".into()),
            ..cp()
        };
        let err = apply_machine_input(&mut m, &input).unwrap_err();
        for field in [
            "role",
            "hostname",
            "ip",
            "dns",
            "install_disk",
            "disk_handoff",
        ] {
            assert!(err.for_field(field).is_some(), "{field} missing in {err}");
        }
        assert!(err.for_field("gateway").is_none(), "{err}");
    }

    #[test]
    fn a_complete_controlplane_is_accepted_and_empty_clears() {
        let mut m = Machine::discovered(mac());
        apply_machine_input(&mut m, &cp()).unwrap();
        assert_eq!(m.role, Role::Controlplane);
        let clear = MachineInput {
            role: Some("unassigned".into()),
            hostname: Some(String::new()),
            ip: Some(String::new()),
            gateway: Some(String::new()),
            ..Default::default()
        };
        apply_machine_input(&mut m, &clear).unwrap();
        assert_eq!((m.hostname, m.ip, m.gateway), (None, None, None));
    }

    #[test]
    fn a_talos_version_pin_is_validated_and_cleared() {
        let mut m = Machine::discovered(mac());
        for bad in ["1.10.9", "v1.2.0", "../v1.11.6"] {
            let err = apply_machine_input(
                &mut m,
                &MachineInput {
                    talos_version: Some(bad.into()),
                    ..cp()
                },
            )
            .unwrap_err();
            assert!(err.for_field("talos_version").is_some(), "{bad}: {err}");
        }
        assert_eq!(m.talos_version, None);
        apply_machine_input(
            &mut m,
            &MachineInput {
                talos_version: Some(" v1.10.9 ".into()),
                ..cp()
            },
        )
        .unwrap();
        assert_eq!(m.talos_version.as_deref(), Some("v1.10.9"));
        apply_machine_input(
            &mut m,
            &MachineInput {
                talos_version: Some("none".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(m.talos_version, None);
    }

    #[test]
    fn gateway_outside_the_subnet_is_refused() {
        let mut m = Machine::discovered(mac());
        let err = apply_machine_input(
            &mut m,
            &MachineInput {
                gateway: Some("10.0.1.1".into()),
                ..cp()
            },
        )
        .unwrap_err();
        assert!(err.for_field("gateway").unwrap().contains("outside"));
    }

    fn lan() -> Lan {
        Lan {
            subnet: "10.0.0.0/24".parse().unwrap(),
            pool: Some(Pool {
                start: "10.0.0.200".parse().unwrap(),
                end: "10.0.0.250".parse().unwrap(),
            }),
            appliance: vec!["10.0.0.2".parse().unwrap()],
            kernel: crate::talos::kernel::Additions::offline(),
            default_version: crate::config::DEFAULT_TALOS_VERSION.into(),
        }
    }

    fn node(role: &str, n: u8) -> MachineInput {
        MachineInput {
            role: Some(role.into()),
            hostname: Some(format!("{role}-{n}")),
            ip: Some(format!("10.0.0.{}/24", 10 + n)),
            ..Default::default()
        }
    }

    fn mac_n(n: u8) -> Mac {
        Mac([0x52, 0x54, 0, 0, 0, n])
    }

    async fn fresh() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).await.unwrap();
        (dir, db)
    }

    #[tokio::test]
    async fn inventory_rules_refuse_duplicates_the_pool_other_subnets_and_a_fourth_control_plane() {
        let (_dir, db) = fresh().await;
        for n in 1..=3 {
            save_machine(
                &db,
                Some(&lan()),
                mac_n(n),
                &node("controlplane", n),
                true,
                false,
                1,
            )
            .await
            .unwrap();
        }
        let refused = |input: MachineInput, field: &'static str, words: &'static str| {
            let db = db.clone();
            async move {
                let err = save_machine(&db, Some(&lan()), mac_n(9), &input, true, false, 2)
                    .await
                    .unwrap_err();
                let msg = err
                    .for_field(field)
                    .unwrap_or_else(|| panic!("{field}: {err}"));
                assert!(msg.contains(words), "{field}: {msg}");
            }
        };
        refused(node("controlplane", 4), "role", "three control planes").await;
        refused(
            MachineInput {
                ip: Some("10.0.0.2/24".into()),
                ..node("worker", 4)
            },
            "ip",
            "this appliance's own address",
        )
        .await;
        refused(
            MachineInput {
                hostname: Some("controlplane-1".into()),
                ..node("worker", 4)
            },
            "hostname",
            "already used by 52:54:00:00:00:01",
        )
        .await;
        refused(
            MachineInput {
                ip: Some("10.0.0.11/24".into()),
                ..node("worker", 4)
            },
            "ip",
            "already used",
        )
        .await;
        refused(
            MachineInput {
                ip: Some("10.0.0.210/24".into()),
                ..node("worker", 4)
            },
            "ip",
            "dynamic pool",
        )
        .await;
        refused(
            MachineInput {
                ip: Some("192.168.7.4/24".into()),
                ..node("worker", 4)
            },
            "ip",
            "outside the LAN subnet",
        )
        .await;
        assert!(
            db.get_machine(mac_n(9)).await.unwrap().is_none(),
            "nothing stored"
        );
        save_machine(
            &db,
            Some(&lan()),
            mac_n(9),
            &node("worker", 4),
            true,
            false,
            3,
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_vip_outside_a_control_planes_subnet_is_refused_beside_the_vip_or_the_address() {
        let (_dir, db) = fresh().await;
        for n in 1..=2 {
            save_machine(
                &db,
                None,
                mac_n(n),
                &node("controlplane", n),
                true,
                false,
                1,
            )
            .await
            .unwrap();
        }
        let with_vip = |vip: &str| cluster::ClusterInput {
            vip: Some(vip.into()),
            nameservers: Some("none".into()),
            ..Default::default()
        };
        let err = cluster::init_cluster(&db, &with_vip("192.168.50.10"), None, 2)
            .await
            .unwrap_err();
        let msg = err.for_field("vip").unwrap_or_else(|| panic!("vip: {err}"));
        assert!(msg.contains("controlplane-1's subnet 10.0.0.0/24"), "{msg}");
        cluster::init_cluster(&db, &with_vip("10.0.0.5"), None, 3)
            .await
            .unwrap();
        let err = cluster::update_cluster(&db, &with_vip("192.168.50.10"), 4)
            .await
            .unwrap_err();
        assert!(err.for_field("vip").is_some(), "{err}");
        let moved = MachineInput {
            ip: Some("10.1.0.12/24".into()),
            ..node("controlplane", 2)
        };
        let err = save_machine(&db, None, mac_n(2), &moved, false, false, 5)
            .await
            .unwrap_err();
        let msg = err.for_field("ip").unwrap_or_else(|| panic!("ip: {err}"));
        assert!(
            msg.contains("VIP 10.0.0.5") && msg.contains("10.1.0.0/24"),
            "{msg}"
        );
        let worker = MachineInput {
            role: Some("worker".into()),
            ..moved
        };
        save_machine(&db, None, mac_n(2), &worker, false, false, 6)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn role_change_of_a_bootstrapped_control_plane_needs_confirmation_and_reinstalls() {
        let (_dir, db) = fresh().await;
        let saved = save_machine(
            &db,
            None,
            mac_n(1),
            &node("controlplane", 1),
            true,
            false,
            1,
        )
        .await
        .unwrap();
        // The node's evidence: its Talos API answered.
        let evidence = crate::model::lifecycle::Step::ReportedIn;
        db.step(saved.machine.mac, evidence, "reported in", 2)
            .await
            .unwrap();
        let worker = MachineInput {
            role: Some("worker".into()),
            ..Default::default()
        };
        let cluster = db.get_cluster(None).await.unwrap().unwrap().name;
        let ip = "10.0.0.11".parse().unwrap();
        db.decide_bootstrap(&cluster, 1, mac_n(1), ip, 3)
            .await
            .unwrap();
        db.finish_bootstrap(
            &cluster,
            1,
            crate::model::BootstrapResult::Bootstrapped,
            "test",
            4,
        )
        .await
        .unwrap();
        let err = save_machine(&db, None, mac_n(1), &worker, false, false, 5)
            .await
            .unwrap_err();
        match &err {
            OpsError::NeedsConfirmation(q) => {
                assert!(q.contains("etcd member") && q.contains("reinstall"), "{q}")
            }
            other => panic!("expected a question, got {other}"),
        }
        assert_eq!(
            db.get_machine(mac_n(1)).await.unwrap().unwrap().role,
            Role::Controlplane
        );
        let saved = save_machine(&db, None, mac_n(1), &worker, false, true, 6)
            .await
            .unwrap();
        assert!(saved.reinstall);
        assert_eq!(saved.machine.role, Role::Worker);
        assert!(!saved.machine.installed, "marked for reinstall");
    }

    #[tokio::test]
    async fn a_diskless_machine_that_ran_is_installed_at_its_next_boot_once_it_may_install() {
        let (_dir, db) = fresh().await;
        let diskless = MachineInput {
            diskless: Some(true),
            talos_version: Some("v1.14.0-rc.1".into()),
            ..node("worker", 4)
        };
        let saved = save_machine(&db, None, mac_n(4), &diskless, true, false, 1)
            .await
            .unwrap();
        assert!(saved.machine.diskless);
        db.step(
            mac_n(4),
            crate::model::lifecycle::Step::ReportedIn,
            "reported in",
            2,
        )
        .await
        .unwrap();
        let installs = MachineInput {
            diskless: Some(false),
            ..Default::default()
        };
        let saved = save_machine(&db, None, mac_n(4), &installs, false, false, 3)
            .await
            .unwrap();
        assert!(saved.reinstall, "nothing is on its disk");
        assert!(!saved.machine.installed && !saved.machine.diskless);
        assert_eq!(saved.machine.state, Lifecycle::Booting);
    }

    #[test]
    fn secrets_are_hidden_in_displayed_configs() {
        let yaml = "machine:\n  token: abc.def\n  ca:\n    crt: PUBLIC\n    key: PRIVATE\ncluster:\n  secret: s3cr3t\n  secretboxEncryptionSecret: B0XVAL\n  token: t0k\n  serviceAccount:\n    key: |\n      SA-LINE-1\n      SA-LINE-2\n  id: clusterid\n---\nkind: Other\ntoken: doc2\n";
        let shown = redact_config(yaml).unwrap();
        for secret in [
            "abc.def", "PRIVATE", "s3cr3t", "B0XVAL", "t0k", "SA-LINE", "doc2",
        ] {
            assert!(!shown.contains(secret), "{secret} leaked:\n{shown}");
        }
        assert!(shown.contains("crt: PUBLIC"));
        assert!(shown.contains("id: clusterid"));
        assert_eq!(shown.matches("[hidden]").count(), 7);
    }
}
