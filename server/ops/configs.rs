//! A machine's rendered config, and the same with its secrets hidden for display.

use super::{materials, OpsError};
use crate::db::Db;
use crate::model::Mac;

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
