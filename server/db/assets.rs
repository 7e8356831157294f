//! Boot assets per Talos version and architecture: their origin, size, SHA-256 and state.

use std::collections::BTreeMap;

use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::{Db, DbError};
use crate::model::assets::{Arch, Asset, AssetFile, AssetSource, AssetState, Digest};
use crate::talos::config::FactorySchematic;

const COLUMNS: &str = "version, arch, source, schematic, kernel_origin, initramfs_origin,
    kernel_size, kernel_sha256, initramfs_size, initramfs_sha256, state, reason, updated_at,
    kernel_args";

impl Db {
    /// The asset recorded for `version` and `arch`, if any.
    pub async fn get_image(&self, version: &str, arch: Arch) -> Result<Option<Asset>, DbError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM images WHERE version = ? AND arch = ?"
        ))
        .bind(version)
        .bind(arch.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(asset_from_row).transpose()
    }

    /// Every recorded asset, by version then architecture.
    pub async fn list_images(&self) -> Result<Vec<Asset>, DbError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM images ORDER BY version, arch"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(asset_from_row).collect()
    }

    /// Records `asset`, replacing what was recorded for its version and architecture.
    pub async fn put_image(&self, asset: &Asset) -> Result<(), DbError> {
        let (state, reason) = state_columns(&asset.state);
        let (source, schematic) = match &asset.source {
            AssetSource::Factory { schematic } => ("factory", schematic.as_str()),
            AssetSource::Release => ("release", ""),
            AssetSource::Local => ("local", ""),
            AssetSource::Found => ("found", ""),
        };
        let size = |f: &AssetFile| f.digest.as_ref().map(|d| d.size as i64);
        let sha = |f: &AssetFile| f.digest.as_ref().map(|d| d.sha256.clone());
        sqlx::query(&format!(
            "INSERT OR REPLACE INTO images ({COLUMNS})
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&asset.version)
        .bind(asset.arch.as_str())
        .bind(source)
        .bind(schematic)
        .bind(&asset.kernel.origin)
        .bind(&asset.initramfs.origin)
        .bind(size(&asset.kernel))
        .bind(sha(&asset.kernel))
        .bind(size(&asset.initramfs))
        .bind(sha(&asset.initramfs))
        .bind(state)
        .bind(reason)
        .bind(asset.updated_at)
        .bind(asset.kernel_args.join(" "))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The Image Factory schematic each version's boot assets of each architecture came from,
    /// with the factory's registry host (from the kernel's download URL), whatever the
    /// assets' state.
    pub async fn factory_schematics(
        &self,
    ) -> Result<BTreeMap<(String, Arch), FactorySchematic>, DbError> {
        let mut out = BTreeMap::new();
        for asset in self.list_images().await? {
            let AssetSource::Factory { schematic } = asset.source else {
                continue;
            };
            if let Some(host) = url_host(&asset.kernel.origin) {
                out.insert(
                    (asset.version, asset.arch),
                    FactorySchematic { host, schematic },
                );
            }
        }
        Ok(out)
    }

    /// Changes only the state of a recorded asset; false if none is recorded.
    pub async fn set_image_state(
        &self,
        version: &str,
        arch: Arch,
        state: &AssetState,
        at: i64,
    ) -> Result<bool, DbError> {
        let (state, reason) = state_columns(state);
        let done = sqlx::query(
            "UPDATE images SET state = ?, reason = ?, updated_at = ? WHERE version = ? AND arch = ?",
        )
        .bind(state)
        .bind(reason)
        .bind(at)
        .bind(version)
        .bind(arch.as_str())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Forgets the asset of `version` and `arch`; false if none was recorded.
    pub async fn remove_image(&self, version: &str, arch: Arch) -> Result<bool, DbError> {
        let done = sqlx::query("DELETE FROM images WHERE version = ? AND arch = ?")
            .bind(version)
            .bind(arch.as_str())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

/// The `host[:port]` of an `http(s)://` URL: the Image Factory's registry is served there.
fn url_host(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit('@').next()?;
    (!host.is_empty()).then(|| host.to_string())
}

fn state_columns(state: &AssetState) -> (&'static str, &str) {
    match state {
        AssetState::Downloading => ("downloading", ""),
        AssetState::Ready => ("ready", ""),
        AssetState::Broken(reason) => ("broken", reason.as_str()),
    }
}

fn asset_from_row(row: &SqliteRow) -> Result<Asset, DbError> {
    let version: String = row.try_get("version")?;
    let arch: String = row.try_get("arch")?;
    let what = format!("image {version} {arch}");
    let corrupt = |why: String| DbError::Corrupt {
        what: what.clone(),
        why,
    };
    let arch = match arch.as_str() {
        "amd64" => Arch::Amd64,
        "arm64" => Arch::Arm64,
        other => return Err(corrupt(format!("unknown arch '{other}'"))),
    };
    let source: String = row.try_get("source")?;
    let schematic: String = row.try_get("schematic")?;
    let source = match source.as_str() {
        "factory" => AssetSource::Factory { schematic },
        "release" => AssetSource::Release,
        "local" => AssetSource::Local,
        "found" => AssetSource::Found,
        other => return Err(corrupt(format!("unknown source '{other}'"))),
    };
    let file = |prefix: &str| -> Result<AssetFile, DbError> {
        let origin: String = row.try_get(format!("{prefix}_origin").as_str())?;
        let size: Option<i64> = row.try_get(format!("{prefix}_size").as_str())?;
        let sha256: Option<String> = row.try_get(format!("{prefix}_sha256").as_str())?;
        let digest = match (size, sha256) {
            (Some(size), Some(sha256)) => Some(Digest {
                size: u64::try_from(size).map_err(|_| corrupt(format!("{prefix} size {size}")))?,
                sha256,
            }),
            (None, None) => None,
            _ => {
                return Err(corrupt(format!(
                    "{prefix} has a size or a sha256, not both"
                )))
            }
        };
        Ok(AssetFile { origin, digest })
    };
    let kernel = file("kernel")?;
    let initramfs = file("initramfs")?;
    let state: String = row.try_get("state")?;
    let reason: String = row.try_get("reason")?;
    let state = match state.as_str() {
        "downloading" => AssetState::Downloading,
        "ready" if kernel.digest.is_some() && initramfs.digest.is_some() => AssetState::Ready,
        "ready" => return Err(corrupt("ready without digests".into())),
        "broken" => AssetState::Broken(reason),
        other => return Err(corrupt(format!("unknown state '{other}'"))),
    };
    let kernel_args: String = row.try_get("kernel_args")?;
    Ok(Asset {
        version,
        arch,
        source,
        kernel,
        initramfs,
        kernel_args: kernel_args.split_whitespace().map(str::to_string).collect(),
        state,
        updated_at: row.try_get("updated_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asset(state: AssetState) -> Asset {
        let digest = Some(Digest {
            size: 3,
            sha256: "a".repeat(64),
        });
        Asset {
            version: "v1.11.6".into(),
            arch: Arch::Amd64,
            source: AssetSource::Factory {
                schematic: "b".repeat(64),
            },
            kernel: AssetFile {
                origin: "http://f/image/k".into(),
                digest: digest.clone(),
            },
            initramfs: AssetFile {
                origin: "http://f/image/i".into(),
                digest,
            },
            kernel_args: vec!["net.ifnames=0".into(), "talos.dashboard.disabled=1".into()],
            state,
            updated_at: 7,
        }
    }

    #[tokio::test]
    async fn images_round_trip_and_change_state() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).await.unwrap();
        let a = asset(AssetState::Ready);
        db.put_image(&a).await.unwrap();
        assert_eq!(db.get_image("v1.11.6", Arch::Amd64).await.unwrap(), Some(a));
        assert_eq!(db.get_image("v1.11.6", Arch::Arm64).await.unwrap(), None);
        let broken = AssetState::Broken("kernel does not match".into());
        assert!(db
            .set_image_state("v1.11.6", Arch::Amd64, &broken, 9)
            .await
            .unwrap());
        let got = db.list_images().await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].state, broken);
        assert!(db.remove_image("v1.11.6", Arch::Amd64).await.unwrap());
        assert!(!db.remove_image("v1.11.6", Arch::Amd64).await.unwrap());
    }

    #[tokio::test]
    async fn factory_schematics_name_the_factorys_registry_host_per_version_and_arch() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).await.unwrap();
        let mut a = asset(AssetState::Ready);
        a.kernel.origin = "https://factory.talos.dev/image/bbb/v1.11.6/kernel-amd64".into();
        db.put_image(&a).await.unwrap();
        let mut mirror = asset(AssetState::Downloading);
        mirror.arch = Arch::Arm64;
        mirror.source = AssetSource::Factory {
            schematic: "c".repeat(64),
        };
        mirror.kernel.origin = "http://10.0.0.5:8080/image/ccc/v1.11.6/kernel-arm64".into();
        db.put_image(&mirror).await.unwrap();
        let mut release = asset(AssetState::Ready);
        release.version = "v1.10.9".into();
        release.source = AssetSource::Release;
        db.put_image(&release).await.unwrap();
        let got = db.factory_schematics().await.unwrap();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(
            got[&("v1.11.6".to_string(), Arch::Amd64)],
            FactorySchematic {
                host: "factory.talos.dev".into(),
                schematic: "b".repeat(64)
            }
        );
        assert_eq!(
            got[&("v1.11.6".to_string(), Arch::Arm64)].host,
            "10.0.0.5:8080"
        );
    }

    #[tokio::test]
    async fn ready_without_digests_is_refused_by_the_schema() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).await.unwrap();
        let mut a = asset(AssetState::Ready);
        a.kernel.digest = None;
        assert!(db.put_image(&a).await.is_err());
        a.state = AssetState::Downloading;
        db.put_image(&a).await.unwrap();
    }
}
