//! Where a node installs from and to: the installer image, the install disk or selector, and
//! the rules a patched config must keep.

use serde_json::{json, Map, Value};

use crate::talos::Arch;

use super::{kind_of, Contract, NodeSpec, RenderError};

/// talosctl's default installer image for a Talos version. From 1.14 no installer is published
/// with releases and `gen config` names none: empty, the node installs its own version and
/// schematic (which needs boot assets from the Image Factory).
pub fn default_install_image(talos_version: &str) -> String {
    match Contract::of(talos_version) {
        Ok(Contract::V1_14) => String::new(),
        _ => format!("ghcr.io/siderolabs/installer:{talos_version}"),
    }
}

/// The installer of an Image Factory schematic for bare metal, as the factory's registry serves
/// it and `talosctl cluster create` names it: `<factory host>/metal-installer/<schematic>:<version>`
/// (the schematic's system extensions and kernel arguments are installed with it).
pub fn factory_installer_image(factory_host: &str, schematic: &str, talos_version: &str) -> String {
    format!("{factory_host}/metal-installer/{schematic}:{talos_version}")
}

/// Where a node's installer image comes from, for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstallerSource {
    /// The cluster's installer image setting (the operator's choice wins).
    Cluster,
    /// The Image Factory schematic the version's boot assets came from.
    Factory { schematic: String },
    /// talosctl's default for the version (none from 1.14).
    TalosDefault,
}

impl std::fmt::Display for InstallerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InstallerSource::Cluster => f.write_str("the cluster's installer image setting"),
            InstallerSource::Factory { schematic } => {
                write!(f, "Image Factory schematic {schematic} of the boot assets")
            }
            InstallerSource::TalosDefault => f.write_str("Talos's default"),
        }
    }
}

/// An Image Factory schematic boot assets came from, and the factory's registry host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FactorySchematic {
    /// `factory.talos.dev`, or a mirror's `host:port`.
    pub host: String,
    pub schematic: String,
}

/// What decides a node's installer image: the cluster's own setting, then the Image Factory
/// schematic its version's boot assets of its architecture came from, then talosctl's default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Installers {
    /// The cluster's installer image setting, with the cluster's Talos version.
    pub cluster: Option<(String, String)>,
    /// Factory schematics of the recorded boot assets, by Talos version and architecture.
    pub factory: std::collections::BTreeMap<(String, Arch), FactorySchematic>,
}

impl Installers {
    /// The installer a node of `arch` running `talos_version` installs, and where it comes from.
    ///
    /// The cluster's setting wins; for a node pinned to another version an image tagged with
    /// the cluster's version is retagged (`…/installer:v1.11.6` becomes `…:v1.10.9`), another
    /// is kept. Otherwise the metal installer of the factory schematic that version's boot
    /// assets of that architecture came from, so the schematic's system extensions are
    /// installed with it; otherwise talosctl's default.
    pub fn pick(&self, talos_version: &str, arch: Arch) -> (String, InstallerSource) {
        if let Some((image, cluster_version)) = &self.cluster {
            let image = match image
                .strip_suffix(cluster_version.as_str())
                .and_then(|rest| rest.strip_suffix(':'))
            {
                Some(repo) if cluster_version != talos_version => {
                    format!("{repo}:{talos_version}")
                }
                _ => image.clone(),
            };
            return (image, InstallerSource::Cluster);
        }
        match self.factory.get(&(talos_version.to_string(), arch)) {
            Some(f) => (
                factory_installer_image(&f.host, &f.schematic, talos_version),
                InstallerSource::Factory {
                    schematic: f.schematic.clone(),
                },
            ),
            None => (
                default_install_image(talos_version),
                InstallerSource::TalosDefault,
            ),
        }
    }
}

/// Talos's minimum disk size (`minimal.DiskSize`): the default selector picks no smaller disk,
/// so an empty card reader or a small boot module is never the install disk.
pub const MIN_INSTALL_DISK: &str = "6GiB";

/// The default install disk up to 1.13 (`machine.install.diskSelector`): the first disk in
/// Talos's device-name order of at least [`MIN_INSTALL_DISK`]. From 1.9 Talos adds to any
/// selector that the disk is not read-only, not a CD/DVD drive and on a transport it knows
/// (so no device-mapper or loop device); 1.8 lists no CD drive, loop, RAM, md or dm device to
/// begin with.
pub fn default_disk_selector() -> Value {
    json!({ "size": format!(">= {MIN_INSTALL_DISK}") })
}

/// The default install disk from 1.14 (`UnattendedInstallConfig`'s CEL `diskSelector.match`):
/// the first disk in Talos's device-name order of at least 6 GiB that is not read-only, not a
/// CD/DVD drive and on a known transport (NVMe, SATA, SAS, virtio, MMC, USB, …); 1.14 adds
/// nothing to the expression itself, so it says what 1.13's selector meant.
pub const DEFAULT_INSTALL_DISK_MATCH: &str =
    "disk.size >= 6u * GiB && !disk.readonly && !disk.cdrom && disk.transport != \"\"";

/// The CEL expression selecting exactly the disk at `path` (1.14).
pub fn disk_path_match(path: &str) -> String {
    format!("disk.dev_path == \"{path}\"")
}

/// `machine.install` as `gen config` writes it (an empty image is left out): `disk` when one
/// is given, else from the node's settings the default selector (`selector`), else neither.
pub(super) fn install(contract: Contract, disk: Option<&str>, image: &str, wipe: bool) -> Value {
    install_on(contract, disk, None, image, wipe)
}

pub(super) fn install_on(
    contract: Contract,
    disk: Option<&str>,
    selector: Option<Value>,
    image: &str,
    wipe: bool,
) -> Value {
    let mut install = Map::new();
    if let Some(disk) = disk {
        install.insert("disk".into(), json!(disk));
    }
    if let Some(selector) = selector {
        install.insert("diskSelector".into(), selector);
    }
    if !image.is_empty() {
        install.insert("image".into(), json!(image));
    }
    install.insert("wipe".into(), json!(wipe));
    if contract >= Contract::V1_12 {
        install.insert("grubUseUKICmdline".into(), json!(true));
    }
    Value::Object(install)
}

/// A patch that names `machine.install.disk` chooses the disk, as `--install-disk` does: the
/// default selector is dropped (Talos would follow a selector over a disk).
pub(super) fn explicit_disk_wins(docs: &mut [Value]) {
    let Some(install) = docs
        .first_mut()
        .and_then(|d| d.pointer_mut("/machine/install"))
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let has_disk = install
        .get("disk")
        .and_then(Value::as_str)
        .is_some_and(|d| !d.is_empty());
    if has_disk && install.get("diskSelector") == Some(&default_disk_selector()) {
        install.shift_remove("diskSelector");
    }
}

/// A diskless node's config installs nothing (a patch may not add an install), and every other
/// node's installs (a patch may not take it away).
pub(super) fn install_rules(
    docs: &[Value],
    contract: Contract,
    node: &NodeSpec,
) -> Result<(), RenderError> {
    let installs = if contract == Contract::V1_14 {
        docs.iter()
            .any(|d| kind_of(d) == Some("UnattendedInstallConfig"))
            || docs
                .first()
                .is_some_and(|d| d.pointer("/machine/install").is_some())
    } else {
        true
    };
    match (node.diskless, installs) {
        (true, true) => Err(RenderError::Invalid(format!(
            "{} is diskless, but its config installs Talos (a patch adds UnattendedInstallConfig or machine.install)",
            node.hostname
        ))),
        (false, false) => Err(RenderError::Invalid(format!(
            "{}'s config has no UnattendedInstallConfig document: bootplane installs Talos to disk unless the machine is diskless",
            node.hostname
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn factory(version: &str, arch: Arch, schematic: &str) -> Installers {
        let mut installers = Installers::default();
        installers.factory.insert(
            (version.to_string(), arch),
            FactorySchematic {
                host: "factory.talos.dev".into(),
                schematic: schematic.into(),
            },
        );
        installers
    }

    #[test]
    fn the_installer_is_the_clusters_then_the_boot_assets_schematics_then_talosctls() {
        let mut installers = factory("v1.13.9", Arch::Amd64, "abc");
        assert_eq!(
            installers.pick("v1.13.9", Arch::Amd64),
            (
                "factory.talos.dev/metal-installer/abc:v1.13.9".to_string(),
                InstallerSource::Factory {
                    schematic: "abc".into()
                }
            )
        );
        assert_eq!(
            installers.pick("v1.13.9", Arch::Arm64),
            (
                "ghcr.io/siderolabs/installer:v1.13.9".to_string(),
                InstallerSource::TalosDefault
            ),
            "arm64 assets not from the factory: the vanilla installer"
        );
        assert_eq!(installers.pick("v1.14.0-rc.1", Arch::Amd64).0, "");
        installers.cluster = Some((
            "factory.talos.dev/installer/def:v1.13.9".into(),
            "v1.13.9".into(),
        ));
        assert_eq!(
            installers.pick("v1.12.11", Arch::Amd64),
            (
                "factory.talos.dev/installer/def:v1.12.11".to_string(),
                InstallerSource::Cluster
            ),
            "the cluster's, retagged for a pinned version"
        );
    }
}
