//! Config patches shared by the UI, the API and the CLI: checked against every machine's
//! config before they are stored, with a preview of their effect on every affected machine.

use serde::{Deserialize, Serialize};

use super::cluster::{first_cluster, loaded};
use super::OpsError;
use crate::db::{Db, DbError};
use crate::model::{Mac, Machine, PatchRecord, PatchScope, Role};
use crate::ops::materials;

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
    #[schema(value_type = String, example = "52:54:00:12:34:56")]
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
                super::configs::redact_config(&text).map_err(|e| OpsError::field("body", e))
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

/// Whether a patch with this scope, MAC and name exists; bad scopes and MACs are field errors.
pub async fn patch_exists(db: &Db, input: &PatchInput) -> Result<bool, OpsError> {
    let (scope, mac) = patch_target(input)?;
    let c = first_cluster(db).await?;
    let name = input.name.trim();
    Ok(db
        .list_patches(&c.name)
        .await?
        .iter()
        .any(|p| p.scope == scope && p.mac == mac && p.name == name))
}

/// The cluster's patches in the order they apply.
pub async fn list_patches(db: &Db) -> Result<Vec<PatchRecord>, OpsError> {
    let c = first_cluster(db).await?;
    Ok(db.list_patches(&c.name).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

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
