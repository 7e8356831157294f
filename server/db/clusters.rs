//! Clusters: settings, secrets bundle, and the facts `serve` records about the LAN.

use std::net::Ipv4Addr;

use sqlx::Row;

use crate::model::{Cluster, LanFacts, NodeSubnets, ReportTargets};

use super::{cluster_id, join_ips, split_ips, Db, DbError};

impl Db {
    /// The Talos version a cluster is set to, if any: one column, for the boot path.
    pub async fn cluster_talos_version(&self, name: &str) -> Result<Option<String>, DbError> {
        let row = sqlx::query("SELECT talos_version FROM clusters WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => row.try_get(0)?,
            None => None,
        })
    }

    /// The cluster named `name`, or the only cluster when `name` is `None`.
    pub async fn get_cluster(&self, name: Option<&str>) -> Result<Option<Cluster>, DbError> {
        let row = match name {
            Some(name) => {
                sqlx::query(&format!("{CLUSTER_SELECT} WHERE name = ?"))
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?
            }
            None => {
                sqlx::query(&format!("{CLUSTER_SELECT} ORDER BY id LIMIT 1"))
                    .fetch_optional(&self.pool)
                    .await?
            }
        };
        row.as_ref().map(cluster_from_row).transpose()
    }

    /// Initialises the cluster `current` (renaming it to `cluster.name`) with its settings
    /// and secrets bundle. Refuses a cluster that already has secrets.
    pub async fn init_cluster(
        &self,
        current: &str,
        cluster: &Cluster,
        secrets_yaml: &str,
        now: i64,
    ) -> Result<(), DbError> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query("SELECT id, secrets IS NOT NULL AS has FROM clusters WHERE name = ?")
            .bind(current)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| DbError::NoCluster(current.to_string()))?;
        if row.try_get::<bool, _>("has")? {
            return Err(DbError::ClusterInitialised(current.to_string()));
        }
        let id: i64 = row.try_get("id")?;
        if cluster.name != current {
            refuse_taken_name(&mut tx, &cluster.name).await?;
        }
        sqlx::query("UPDATE clusters SET name = ?, secrets = ?, initialised_at = ? WHERE id = ?")
            .bind(&cluster.name)
            .bind(secrets_yaml)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        write_cluster_settings(&mut tx, id, cluster).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Replaces the settings of cluster `current` (its name may change too).
    pub async fn update_cluster(&self, current: &str, cluster: &Cluster) -> Result<(), DbError> {
        let mut tx = self.write_tx().await?;
        let id = cluster_id(&mut tx, current).await?;
        if cluster.name != current {
            refuse_taken_name(&mut tx, &cluster.name).await?;
            sqlx::query("UPDATE clusters SET name = ? WHERE id = ?")
                .bind(&cluster.name)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        write_cluster_settings(&mut tx, id, cluster).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Where nodes push their events and kernel log, as `serve` last advertised them (none
    /// before the first `serve`).
    pub async fn report_targets(&self) -> Result<ReportTargets, DbError> {
        let row =
            sqlx::query("SELECT events_endpoint, kernel_log_url FROM appliance_facts WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?;
        Ok(match row {
            Some(row) => ReportTargets {
                events_endpoint: row.try_get("events_endpoint")?,
                kernel_log_url: row.try_get("kernel_log_url")?,
            },
            None => ReportTargets::default(),
        })
    }

    /// The LAN the last `serve` answered on (none before the first `serve`).
    pub async fn lan_facts(&self) -> Result<Option<LanFacts>, DbError> {
        let row = sqlx::query(
            "SELECT lan_subnet, lan_pool, own_addresses FROM appliance_facts WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let corrupt = |why: String| DbError::Corrupt {
            what: "appliance facts".into(),
            why,
        };
        let subnet: String = row.try_get("lan_subnet")?;
        let pool: Option<String> = row.try_get("lan_pool")?;
        let pool = match pool {
            None => None,
            Some(text) => {
                let parsed = text
                    .split_once('-')
                    .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
                Some(parsed.ok_or_else(|| corrupt(format!("bad pool {text}")))?)
            }
        };
        Ok(Some(LanFacts {
            subnet: subnet.parse().map_err(corrupt)?,
            pool,
            own: split_ips(&row.try_get::<String, _>("own_addresses")?).map_err(corrupt)?,
        }))
    }

    /// Records what `serve` puts on the LAN: where nodes report, and the LAN's rules for
    /// machine addresses. Written at start, only when it changed.
    pub async fn set_appliance_facts(
        &self,
        targets: &ReportTargets,
        lan: &LanFacts,
        now: i64,
    ) -> Result<(), DbError> {
        if self.report_targets().await? == *targets && self.lan_facts().await?.as_ref() == Some(lan)
        {
            return Ok(());
        }
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO appliance_facts
                (id, events_endpoint, kernel_log_url, lan_subnet, lan_pool, own_addresses,
                 updated_at)
             VALUES (1, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET events_endpoint = excluded.events_endpoint,
                kernel_log_url = excluded.kernel_log_url, lan_subnet = excluded.lan_subnet,
                lan_pool = excluded.lan_pool, own_addresses = excluded.own_addresses,
                updated_at = excluded.updated_at",
        )
        .bind(&targets.events_endpoint)
        .bind(&targets.kernel_log_url)
        .bind(lan.subnet.to_string())
        .bind(lan.pool.map(|(a, b)| format!("{a}-{b}")))
        .bind(join_ips(&lan.own))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The cluster's secrets bundle (talosctl's secrets.yaml), if it has one.
    pub async fn cluster_secrets(&self, name: &str) -> Result<Option<String>, DbError> {
        let row = sqlx::query("SELECT secrets FROM clusters WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| DbError::NoCluster(name.to_string()))?;
        Ok(row.try_get("secrets")?)
    }
}

const CLUSTER_SELECT: &str = "SELECT name, endpoint, vip, talos_version, kubernetes_version,
    install_image, pod_subnets, service_subnets, dns_domain, node_subnets, nameservers,
    initialised_at, generation, single_controlplane, bootstrapped_at FROM clusters";

fn cluster_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Cluster, DbError> {
    let name: String = row.try_get("name")?;
    let vip: Option<String> = row.try_get("vip")?;
    let vip = vip
        .map(|v| v.parse::<Ipv4Addr>())
        .transpose()
        .map_err(|_| DbError::Corrupt {
            what: format!("cluster {name}"),
            why: "bad vip".into(),
        })?;
    let split = |text: String| -> Vec<String> {
        text.split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    Ok(Cluster {
        endpoint: row.try_get("endpoint")?,
        vip,
        talos_version: row.try_get("talos_version")?,
        kubernetes_version: row.try_get("kubernetes_version")?,
        install_image: row.try_get("install_image")?,
        pod_subnets: split(row.try_get("pod_subnets")?),
        service_subnets: split(row.try_get("service_subnets")?),
        dns_domain: row.try_get("dns_domain")?,
        node_subnets: match row.try_get::<Option<String>, _>("node_subnets")? {
            None => NodeSubnets::Auto,
            Some(text) if text.is_empty() => NodeSubnets::Off,
            Some(text) => NodeSubnets::Given(split(text)),
        },
        nameservers: split_ips(&row.try_get::<String, _>("nameservers")?).map_err(|why| {
            DbError::Corrupt {
                what: format!("cluster {name}"),
                why: format!("bad nameservers: {why}"),
            }
        })?,
        initialised_at: row.try_get("initialised_at")?,
        generation: row.try_get("generation")?,
        single_controlplane: row.try_get::<bool, _>("single_controlplane")?,
        bootstrapped_at: row.try_get("bootstrapped_at")?,
        name,
    })
}

async fn write_cluster_settings(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    id: i64,
    c: &Cluster,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE clusters SET endpoint = ?, vip = ?, talos_version = ?, kubernetes_version = ?,
            install_image = ?, pod_subnets = ?, service_subnets = ?, dns_domain = ?,
            node_subnets = ?, nameservers = ?, single_controlplane = ?
         WHERE id = ?",
    )
    .bind(&c.endpoint)
    .bind(c.vip.map(|v| v.to_string()))
    .bind(&c.talos_version)
    .bind(&c.kubernetes_version)
    .bind(&c.install_image)
    .bind(c.pod_subnets.join(","))
    .bind(c.service_subnets.join(","))
    .bind(&c.dns_domain)
    .bind(match &c.node_subnets {
        NodeSubnets::Auto => None,
        NodeSubnets::Off => Some(String::new()),
        NodeSubnets::Given(list) => Some(list.join(",")),
    })
    .bind(join_ips(&c.nameservers))
    .bind(c.single_controlplane)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A cluster is renamed only to a name no other cluster has.
async fn refuse_taken_name(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    name: &str,
) -> Result<(), DbError> {
    let taken = sqlx::query("SELECT 1 FROM clusters WHERE name = ?")
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?;
    match taken {
        Some(_) => Err(DbError::ClusterNameTaken(name.to_string())),
        None => Ok(()),
    }
}
