//! Which Talos version and architecture a machine boots.

use crate::db::{Db, DbError};
use crate::model::Machine;
use crate::talos::Arch;

/// else the appliance's default (`--talos-version`).
pub fn selected_version<'a>(
    pin: Option<&'a str>,
    cluster: Option<&'a str>,
    default: &'a str,
) -> &'a str {
    pin.or(cluster).unwrap_or(default)
}

/// `selected_version` for a stored machine, reading its cluster.
pub async fn machine_version(db: &Db, m: &Machine, default: &str) -> Result<String, DbError> {
    if let Some(pin) = &m.talos_version {
        return Ok(pin.clone());
    }
    let cluster = db.cluster_talos_version(&m.cluster).await?;
    Ok(selected_version(None, cluster.as_deref(), default).to_string())
}

/// The boot asset architecture of a machine from its DHCP client architecture (option 93):
/// ARM64 UEFI (11, and 19 for HTTP boot) is arm64, everything else (and not seen yet) amd64.
pub fn arch_of_client(last_arch: Option<u16>) -> Arch {
    Arch::of_dhcp_client(last_arch)
}

/// What one `verify` pass found.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_wins_over_the_cluster_which_wins_over_the_default() {
        assert_eq!(
            selected_version(Some("v1.10.9"), Some("v1.11.6"), "v1.9.5"),
            "v1.10.9"
        );
        assert_eq!(selected_version(None, Some("v1.11.6"), "v1.9.5"), "v1.11.6");
        assert_eq!(selected_version(None, None, "v1.9.5"), "v1.9.5");
    }

    #[tokio::test]
    async fn a_stored_machine_boots_its_pin_else_its_clusters_version() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).await.unwrap();
        let mut m = Machine::discovered("52:54:00:00:00:01".parse().unwrap());
        assert_eq!(machine_version(&db, &m, "v1.9.5").await.unwrap(), "v1.9.5");
        let mut c = db.get_cluster(None).await.unwrap().unwrap();
        c.talos_version = Some("v1.11.6".into());
        db.update_cluster(&c.name.clone(), &c).await.unwrap();
        m.cluster = c.name.clone();
        assert_eq!(machine_version(&db, &m, "v1.9.5").await.unwrap(), "v1.11.6");
        m.talos_version = Some("v1.10.9".into());
        assert_eq!(machine_version(&db, &m, "v1.9.5").await.unwrap(), "v1.10.9");
    }

    #[test]
    fn arm64_firmware_gets_arm64_assets() {
        assert_eq!(arch_of_client(Some(11)), Arch::Arm64);
        assert_eq!(arch_of_client(Some(7)), Arch::Amd64);
        assert_eq!(arch_of_client(None), Arch::Amd64);
    }
}
