//! Cluster operations shared by the UI, the API and the CLI: initialisation and settings,
//! patches with a preview of their effect on every affected machine, downloads of client
//! credentials. Field rules are the CLI's (`cli::apply_cluster_fields`), reported per field.

use serde::{Deserialize, Serialize};

use super::{FieldError, OpsError};
use crate::cli::{self, ClusterFields};
use crate::db::{Db, DbError};
use crate::materials;
use crate::model::{validate_hostname, Cluster, Mac, Machine, PatchRecord, PatchScope, Role};

/// Cluster settings as an operator types them; `None` leaves a setting as it is.
#[derive(Clone, Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterInput {
    /// Cluster name (one DNS label)
    pub name: Option<String>,
    /// Kubernetes API endpoint, https://<vip-or-load-balancer>:6443
    pub endpoint: Option<String>,
    /// Layer-2 VIP Talos keeps on one healthy control plane; empty clears it
    pub vip: Option<String>,
    /// Talos version, e.g. v1.11.6
    pub talos_version: Option<String>,
    /// Kubernetes version, e.g. 1.34.1; "default" for the Talos version's default
    pub kubernetes_version: Option<String>,
    /// Installer image; "default" for ghcr.io/siderolabs/installer:<talos-version>
    pub install_image: Option<String>,
    /// Pod subnets, comma-separated
    pub pod_subnets: Option<String>,
    /// Service subnets, comma-separated
    pub service_subnets: Option<String>,
    /// Kubernetes DNS domain
    pub dns_domain: Option<String>,
    /// Bootstrap with one control plane instead of waiting for three
    pub single_controlplane: Option<bool>,
}

impl ClusterInput {
    fn fields(&self) -> ClusterFields {
        ClusterFields {
            endpoint: self.endpoint.clone(),
            vip: self.vip.clone(),
            talos_version: self.talos_version.clone(),
            kubernetes_version: self.kubernetes_version.clone(),
            install_image: self.install_image.clone(),
            pod_subnets: self.pod_subnets.clone(),
            service_subnets: self.service_subnets.clone(),
            dns_domain: self.dns_domain.clone(),
            single_controlplane: self.single_controlplane,
        }
    }
}

/// The CLI's messages name their flag first (`--vip '…' is not…`): that flag is the field.
fn field_error(message: String) -> OpsError {
    let field = message
        .strip_prefix("--")
        .and_then(|rest| rest.split([' ', ':']).next())
        .map(|flag| flag.replace('-', "_"))
        .unwrap_or_else(|| {
            if message.contains("--endpoint") {
                "endpoint".into()
            } else {
                "cluster".into()
            }
        });
    OpsError::Invalid(vec![FieldError { field, message }])
}

fn cli_error(e: cli::CliError) -> OpsError {
    match e {
        cli::CliError::Invalid(msg) => field_error(msg),
        cli::CliError::Db(e) => OpsError::Db(e),
        other => OpsError::Refused(other.to_string()),
    }
}

fn system_time(now: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(now).unwrap_or(0))
}

async fn first_cluster(db: &Db) -> Result<Cluster, OpsError> {
    Ok(db
        .get_cluster(None)
        .await?
        .ok_or_else(|| DbError::NoCluster("default".into()))?)
}

async fn loaded(db: &Db) -> Result<materials::LoadedCluster, OpsError> {
    materials::load_cluster(db, None)
        .await
        .map_err(|e| OpsError::Refused(e.to_string()))
}

fn check_name(name: &str) -> Result<(), OpsError> {
    validate_hostname(name).map_err(|e| OpsError::field("name", e))
}

/// Makes the cluster's secrets bundle (or adopts `import_secrets`, talosctl's secrets.yaml)
/// and stores its settings. Every assigned machine's config must render.
pub async fn init_cluster(
    db: &Db,
    input: &ClusterInput,
    import_secrets: Option<&str>,
    now: i64,
) -> Result<Cluster, OpsError> {
    let current = first_cluster(db).await?;
    if current.initialised_at.is_some() {
        return Err(OpsError::Refused(format!(
            "cluster {} is already initialised (it has a secrets bundle)",
            current.name
        )));
    }
    let mut c = current.clone();
    if let Some(name) = &input.name {
        check_name(name)?;
        c.name = name.clone();
    }
    if c.talos_version.is_none() && input.talos_version.is_none() {
        c.talos_version = Some(crate::config::DEFAULT_TALOS_VERSION.to_string());
    }
    cli::apply_cluster_fields(&mut c, &input.fields()).map_err(cli_error)?;
    let spec =
        materials::cluster_spec(&c).map_err(|e| OpsError::field("cluster", e.to_string()))?;
    let bundle = materials::new_bundle(&spec.talos_version, import_secrets, system_time(now))
        .map_err(|e| OpsError::field("secrets", e.to_string()))?;
    let mut machines = db.list_machines().await?;
    for m in machines.iter_mut().filter(|m| m.cluster == current.name) {
        m.cluster = c.name.clone();
    }
    materials::check_cluster(&spec, &materials::config_secrets(&bundle), &[], &machines)
        .map_err(|e| OpsError::field("config", e.to_string()))?;
    db.init_cluster(&current.name, &c, &bundle.to_yaml(), now)
        .await?;
    first_cluster(db).await
}

/// Changes the cluster's settings; refused if any machine's config would no longer render.
pub async fn update_cluster(db: &Db, input: &ClusterInput, _now: i64) -> Result<Cluster, OpsError> {
    let loaded = loaded(db).await?;
    let current = loaded.cluster.name.clone();
    let mut c = loaded.cluster.clone();
    if let Some(name) = &input.name {
        check_name(name)?;
        c.name = name.clone();
    }
    cli::apply_cluster_fields(&mut c, &input.fields()).map_err(cli_error)?;
    let spec =
        materials::cluster_spec(&c).map_err(|e| OpsError::field("cluster", e.to_string()))?;
    let mut machines = db.list_machines().await?;
    for m in machines.iter_mut().filter(|m| m.cluster == current) {
        m.cluster = c.name.clone();
        if c.vip.is_some() && m.ip.map(|i| i.addr) == c.vip {
            return Err(OpsError::field(
                "vip",
                format!(
                    "{} is the address of {}",
                    m.ip.map(|i| i.addr.to_string()).unwrap_or_default(),
                    m.mac
                ),
            ));
        }
    }
    materials::check_cluster(&spec, &loaded.secrets, &loaded.patches, &machines)
        .map_err(|e| OpsError::field("config", e.to_string()))?;
    db.update_cluster(&current, &c).await?;
    first_cluster(db).await
}

/// A patch as an operator gives it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchInput {
    /// cluster, controlplane, worker or machine
    pub scope: String,
    /// The machine's MAC, for scope machine only
    pub mac: Option<String>,
    /// Name of the patch, unique per scope (and machine)
    pub name: String,
    /// YAML strategic-merge patch, or a JSON (RFC 6902) patch list
    pub body: String,
}

fn patch_target(input: &PatchInput) -> Result<(PatchScope, Option<Mac>), OpsError> {
    let scope: PatchScope = input
        .scope
        .trim()
        .parse()
        .map_err(|e: String| OpsError::field("scope", e))?;
    let mac = match input
        .mac
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        Some(text) => Some(
            text.parse::<Mac>()
                .map_err(|e| OpsError::field("mac", e.to_string()))?,
        ),
        None => None,
    };
    match (scope, mac) {
        (PatchScope::Machine, None) => Err(OpsError::field(
            "mac",
            "a machine patch needs the machine's MAC",
        )),
        (PatchScope::Machine, Some(m)) => Ok((scope, Some(m))),
        (_, Some(_)) => Err(OpsError::field("mac", "a MAC goes only with scope machine")),
        (_, None) => Ok((scope, None)),
    }
}

fn check_patch_name(name: &str) -> Result<(), OpsError> {
    if name.trim().is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(OpsError::field(
            "name",
            "a patch needs a name of 1 to 64 printable characters",
        ));
    }
    Ok(())
}

/// The patch list with `record` added, or replacing the patch of the same scope and name.
fn with_patch(existing: &[PatchRecord], record: &PatchRecord) -> Vec<PatchRecord> {
    let same =
        |p: &PatchRecord| p.scope == record.scope && p.mac == record.mac && p.name == record.name;
    let mut records: Vec<PatchRecord> = existing.iter().filter(|p| !same(p)).cloned().collect();
    let at = records
        .iter()
        .rposition(|p| p.scope == record.scope && p.mac == record.mac)
        .map(|i| i + 1)
        .unwrap_or_else(|| records.iter().filter(|p| p.scope <= record.scope).count());
    let replacing = existing.iter().position(same);
    records.insert(replacing.unwrap_or(at).min(records.len()), record.clone());
    records
}

fn affects(scope: PatchScope, mac: Option<Mac>, m: &Machine) -> bool {
    m.is_assigned()
        && match scope {
            PatchScope::Cluster => true,
            PatchScope::Controlplane => m.role == Role::Controlplane,
            PatchScope::Worker => m.role == Role::Worker,
            PatchScope::Machine => Some(m.mac) == mac,
        }
}

/// What a patch changes in one machine's (redacted) config.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct PatchPreview {
    #[schema(value_type = String)]
    pub mac: Mac,
    pub hostname: Option<String>,
    /// Unified diff of the rendered config before and after; empty when nothing changes.
    pub diff: String,
}

struct Prepared {
    loaded: materials::LoadedCluster,
    record: PatchRecord,
    records: Vec<PatchRecord>,
    machines: Vec<Machine>,
}

async fn prepare(db: &Db, input: &PatchInput) -> Result<Prepared, OpsError> {
    let (scope, mac) = patch_target(input)?;
    check_patch_name(&input.name)?;
    if input.body.trim().is_empty() {
        return Err(OpsError::field("body", "the patch is empty"));
    }
    let loaded = loaded(db).await?;
    let record = PatchRecord {
        scope,
        mac,
        position: i64::MAX,
        name: input.name.trim().to_string(),
        body: input.body.clone(),
    };
    let records = with_patch(&loaded.patches, &record);
    let machines = db.list_machines().await?;
    materials::check_cluster(&loaded.spec, &loaded.secrets, &records, &machines)
        .map_err(|e| OpsError::field("body", format!("patch refused: {e}")))?;
    Ok(Prepared {
        loaded,
        record,
        records,
        machines,
    })
}

/// Renders every machine the patch touches with and without it (secrets hidden), without
/// storing anything. Refused like `save_patch` when any config would be invalid.
pub async fn preview_patch(db: &Db, input: &PatchInput) -> Result<Vec<PatchPreview>, OpsError> {
    let mut p = prepare(db, input).await?;
    let affected: Vec<Machine> = p
        .machines
        .iter()
        .filter(|m| m.cluster == p.loaded.cluster.name && affects(p.record.scope, p.record.mac, m))
        .cloned()
        .collect();
    let render_all = |l: &materials::LoadedCluster| -> Result<Vec<String>, OpsError> {
        affected
            .iter()
            .map(|m| {
                let text = materials::render_machine(l, m)
                    .map_err(|e| OpsError::field("body", e.to_string()))?;
                super::redact_config(&text).map_err(|e| OpsError::field("body", e))
            })
            .collect()
    };
    let before = render_all(&p.loaded)?;
    p.loaded.patches = std::mem::take(&mut p.records);
    let after = render_all(&p.loaded)?;
    Ok(affected
        .iter()
        .zip(before.iter().zip(after.iter()))
        .map(|(m, (old, new))| PatchPreview {
            mac: m.mac,
            hostname: m.hostname.clone(),
            diff: if old == new {
                String::new()
            } else {
                similar::TextDiff::from_lines(old, new)
                    .unified_diff()
                    .context_radius(3)
                    .header("before", "after")
                    .to_string()
            },
        })
        .collect())
}

/// Stores the patch (replacing one of the same scope and name) after checking that every
/// machine's config still renders valid with it.
pub async fn save_patch(db: &Db, input: &PatchInput, now: i64) -> Result<PatchRecord, OpsError> {
    let p = prepare(db, input).await?;
    db.put_patch(&p.loaded.cluster.name, &p.record, now).await?;
    Ok(p.record)
}

/// Removes a patch.
pub async fn remove_patch(db: &Db, input: &PatchInput, _now: i64) -> Result<(), OpsError> {
    let (scope, mac) = patch_target(input)?;
    let c = first_cluster(db).await?;
    match db
        .remove_patch(&c.name, scope, mac, input.name.trim())
        .await
    {
        Ok(()) => Ok(()),
        Err(DbError::NoPatch(name)) => Err(OpsError::Refused(format!(
            "no patch named '{name}' at that scope"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// The cluster's patches in the order they apply.
pub async fn list_patches(db: &Db) -> Result<Vec<PatchRecord>, OpsError> {
    let c = first_cluster(db).await?;
    Ok(db.list_patches(&c.name).await?)
}

/// A talosconfig for the cluster's control planes (client certificate from the OS CA).
pub async fn talosconfig(db: &Db, now: i64) -> Result<String, OpsError> {
    let loaded = loaded(db).await?;
    let machines = db.list_machines().await?;
    let endpoints: Vec<String> = machines
        .iter()
        .filter(|m| m.role == Role::Controlplane && m.cluster == loaded.cluster.name)
        .filter_map(|m| m.ip.map(|ip| ip.addr.to_string()))
        .collect();
    loaded
        .bundle
        .talosconfig(&loaded.cluster.name, &endpoints, system_time(now))
        .map_err(|e| OpsError::Refused(e.to_string()))
}

/// An admin kubeconfig for the cluster's endpoint.
pub async fn kubeconfig(db: &Db, now: i64) -> Result<String, OpsError> {
    let loaded = loaded(db).await?;
    loaded
        .bundle
        .kubeconfig(
            &loaded.cluster.name,
            &loaded.spec.endpoint,
            system_time(now),
        )
        .map_err(|e| OpsError::Refused(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_messages_land_on_their_field() {
        let e = field_error("--vip 'x' is not an IPv4 address".into());
        assert_eq!(
            e.for_field("vip").as_deref(),
            Some("--vip 'x' is not an IPv4 address")
        );
        let e = field_error("--pod-subnets 'x' is not a subnet like 10.244.0.0/16".into());
        assert!(e.for_field("pod_subnets").is_some());
        let e =
            field_error("the cluster needs --endpoint https://<vip-or-lb>:6443 (or --vip)".into());
        assert!(e.for_field("endpoint").is_some());
        let e = field_error("--endpoint: not a URL".into());
        assert!(e.for_field("endpoint").is_some());
    }

    #[test]
    fn machine_patches_need_exactly_a_mac() {
        let input = |scope: &str, mac: Option<&str>| PatchInput {
            scope: scope.into(),
            mac: mac.map(str::to_string),
            name: "p".into(),
            body: "machine: {}".into(),
        };
        assert!(patch_target(&input("machine", None))
            .unwrap_err()
            .for_field("mac")
            .is_some());
        assert!(patch_target(&input("worker", Some("52:54:00:00:00:01"))).is_err());
        assert!(patch_target(&input("machine", Some("zz")))
            .unwrap_err()
            .for_field("mac")
            .is_some());
        assert!(patch_target(&input("everything", None))
            .unwrap_err()
            .for_field("scope")
            .is_some());
        assert_eq!(
            patch_target(&input("controlplane", Some(""))).unwrap(),
            (PatchScope::Controlplane, None)
        );
    }
}
