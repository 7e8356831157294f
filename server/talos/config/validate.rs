//! Validation of rendered documents: each line's JSON schema, and the rules Talos checks
//! beyond it.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::{json, Value};

use crate::model::Role;

use super::{kind_of, Contract, RenderError};

const SCHEMA_V1_11: &str = include_str!("../schema/config.schema.v1.11.json");
const SCHEMA_V1_12: &str = include_str!("../schema/config.schema.v1.12.11.json");
const SCHEMA_V1_13: &str = include_str!("../schema/config.schema.v1.13.9.json");
const SCHEMA_V1_14: &str = include_str!("../schema/config.schema.v1.14.0-rc.1.json");

/// Document kinds a schema names differently from what Talos writes and reads: (schema's,
/// Talos's). v1.14.0-rc.1's schema says `UnattendedInstall`, while `gen config` (its stability
/// fixtures) and the config loader use `UnattendedInstallConfig`.
const KIND_ALIASES: &[(&str, &str)] = &[("UnattendedInstall", "UnattendedInstallConfig")];

/// One Talos line's schema, split per document kind. Each kind's validator is compiled the
/// first time a document of that kind is checked: a line's schema names dozens of kinds
/// (89 in v1.14), each compiled against the whole schema, while a cluster renders a handful.
struct Validators {
    /// The schema, with the kind aliases added.
    root: Value,
    v1alpha1: Compiled,
    /// Each kind in the schema's `oneOf` against its own definition (`$ref`).
    kinds: HashMap<String, (String, Compiled)>,
    /// The whole schema, for a document whose kind the schema does not name.
    any_document: Compiled,
}

type Compiled = OnceLock<Result<jsonschema::Validator, String>>;

impl Validators {
    fn build(text: &str) -> Result<Validators, String> {
        let mut root: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        strip_annotations(&mut root);
        let definitions = root
            .get_mut("$defs")
            .and_then(Value::as_object_mut)
            .into_iter()
            .flat_map(|defs| defs.values_mut());
        for definition in definitions {
            if let Some(Value::Array(names)) = definition.pointer_mut("/properties/kind/enum") {
                for (schema_kind, talos_kind) in KIND_ALIASES {
                    if names.iter().any(|n| n == schema_kind) {
                        names.push(json!(talos_kind));
                    }
                }
            }
        }
        let mut kinds = HashMap::new();
        let references = root
            .get("oneOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|r| r.get("$ref").and_then(Value::as_str));
        for reference in references {
            let definition = reference
                .strip_prefix("#/$defs/")
                .and_then(|name| root.get("$defs")?.get(name));
            let names = definition
                .and_then(|d| d.pointer("/properties/kind/enum"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str);
            for kind in names {
                kinds.insert(kind.to_string(), (reference.to_string(), OnceLock::new()));
            }
        }
        let validators = Validators {
            root,
            v1alpha1: OnceLock::new(),
            kinds,
            any_document: OnceLock::new(),
        };
        // The v1alpha1 definition is checked in every config: a schema that cannot compile
        // it fails here, once, not at the first render.
        validators.v1alpha1()?;
        Ok(validators)
    }

    fn v1alpha1(&self) -> Result<&jsonschema::Validator, String> {
        compiled(&self.v1alpha1, || {
            self.for_definition("#/$defs/v1alpha1.Config")
        })
    }

    /// The validator of `kind`'s definition, or `None` for a kind the schema does not name.
    fn kind(&self, kind: &str) -> Option<Result<&jsonschema::Validator, String>> {
        let (reference, cell) = self.kinds.get(kind)?;
        Some(compiled(cell, || self.for_definition(reference)))
    }

    fn any_document(&self) -> Result<&jsonschema::Validator, String> {
        compiled(&self.any_document, || {
            jsonschema::validator_for(&self.root).map_err(|e| e.to_string())
        })
    }

    /// The whole schema with its `oneOf` replaced by `reference`, so `$ref`s inside the
    /// definition resolve as they do in the schema.
    fn for_definition(&self, reference: &str) -> Result<jsonschema::Validator, String> {
        let mut schema = self.root.clone();
        if let Some(obj) = schema.as_object_mut() {
            obj.remove("oneOf");
            obj.insert("$ref".into(), json!(reference));
        }
        jsonschema::validator_for(&schema).map_err(|e| e.to_string())
    }
}

/// Keywords that only document a schema (four fifths of Talos's schema text): validation
/// never reads them, and without them the kept schema and each compile are smaller.
const ANNOTATIONS: &[&str] = &[
    "description",
    "markdownDescription",
    "x-intellij-html-description",
];

/// Removes [`ANNOTATIONS`] from every schema inside `schema`. The keys of `properties`,
/// `patternProperties` and `$defs` are names, not keywords: a property called `description`
/// stays; so does everything inside values that are data (`enum`, `const`, `default`,
/// `examples`).
fn strip_annotations(schema: &mut Value) {
    match schema {
        Value::Object(keywords) => {
            for annotation in ANNOTATIONS {
                if keywords.get(*annotation).is_some_and(Value::is_string) {
                    keywords.remove(*annotation);
                }
            }
            for (keyword, value) in keywords.iter_mut() {
                match (keyword.as_str(), value) {
                    ("enum" | "const" | "default" | "examples", _) => {}
                    ("properties" | "patternProperties" | "$defs", Value::Object(named)) => {
                        named.values_mut().for_each(strip_annotations)
                    }
                    (_, value) => strip_annotations(value),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip_annotations),
        _ => {}
    }
}

fn compiled(
    cell: &Compiled,
    compile: impl FnOnce() -> Result<jsonschema::Validator, String>,
) -> Result<&jsonschema::Validator, String> {
    cell.get_or_init(compile).as_ref().map_err(Clone::clone)
}

/// The validators of the schema of `contract`'s line (built once).
fn validators(contract: Contract) -> Result<&'static Validators, RenderError> {
    static V1_11: OnceLock<Result<Validators, String>> = OnceLock::new();
    static V1_12: OnceLock<Result<Validators, String>> = OnceLock::new();
    static V1_13: OnceLock<Result<Validators, String>> = OnceLock::new();
    static V1_14: OnceLock<Result<Validators, String>> = OnceLock::new();
    let (cell, text) = match contract {
        Contract::V1_8 => (&V1_11, SCHEMA_V1_11),
        Contract::V1_12 => (&V1_12, SCHEMA_V1_12),
        Contract::V1_13 => (&V1_13, SCHEMA_V1_13),
        Contract::V1_14 => (&V1_14, SCHEMA_V1_14),
    };
    cell.get_or_init(|| Validators::build(text))
        .as_ref()
        .map_err(schema_failed)
}

fn schema_failed(e: impl std::fmt::Display) -> RenderError {
    RenderError::Invalid(format!("schema failed to load: {e}"))
}

/// Loads `contract`'s schema and compiles its machine-config (v1alpha1) validator ahead of
/// the first render (tens of milliseconds). The other kinds still compile when first used
/// (a few milliseconds each): compiling all of them ahead would hold up to 2.5 MB more for
/// kinds a cluster may never render. Safe to call from any thread, any number of times.
pub fn warm(contract: Contract) {
    if let Err(e) = validators(contract) {
        tracing::error!(error = %e, line = contract.line(), "config schema did not load");
    }
}

/// Checks each document against the schema of `contract`'s Talos line (the v1alpha1 document
/// after removing `persist`, which the schema does not describe, against its definition; any
/// other against its kind's), plus the rules Talos's own validation adds that a schema cannot
/// say.
pub fn validate(docs: &[Value], role: Role, contract: Contract) -> Result<(), RenderError> {
    let validators = validators(contract)?;
    for (i, doc) in docs.iter().enumerate() {
        let mut doc = doc.clone();
        let is_v1alpha1 = doc.get("version").and_then(Value::as_str) == Some("v1alpha1");
        if let Some(obj) = doc.as_object_mut() {
            if is_v1alpha1 {
                match obj.remove("persist") {
                    None | Some(Value::Bool(true)) => {}
                    Some(_) => {
                        return Err(RenderError::Invalid(".persist should be enabled".into()))
                    }
                }
            }
        }
        let validator = match kind_of(&doc) {
            _ if is_v1alpha1 => validators.v1alpha1(),
            Some(kind) => validators.kind(kind).ok_or_else(|| {
                RenderError::Invalid(format!(
                    "document {}: Talos {} has no {kind} document",
                    i + 1,
                    contract.line()
                ))
            })?,
            None => validators.any_document(),
        }
        .map_err(schema_failed)?;
        let errors: Vec<String> = validator
            .iter_errors(&doc)
            .take(5)
            .map(|e| {
                let path = e.instance_path().to_string();
                format!("{}: {e}", if path.is_empty() { "/" } else { &path })
            })
            .collect();
        if !errors.is_empty() {
            let name = kind_of(&doc).unwrap_or("v1alpha1");
            return Err(RenderError::Invalid(format!(
                "document {} ({name}): {}",
                i + 1,
                errors.join("; ")
            )));
        }
        if is_v1alpha1 {
            talos_rules(&doc, role, contract, docs)?;
        }
    }
    if docs
        .first()
        .and_then(|d| d.get("version"))
        .and_then(Value::as_str)
        != Some("v1alpha1")
    {
        return Err(RenderError::Invalid(
            "the first document must be the v1alpha1 machine config".into(),
        ));
    }
    document_rules(docs, role)
}

/// Talos's conflict rules between documents and the v1alpha1 fields they deprecate, and the
/// VIP rule for documents.
fn document_rules(docs: &[Value], role: Role) -> Result<(), RenderError> {
    let Some(v1alpha1) = docs.first() else {
        return Ok(());
    };
    let has = |kind: &str| docs.iter().any(|d| kind_of(d) == Some(kind));
    let set = |path: &str| {
        v1alpha1
            .pointer(path)
            .is_some_and(|v| !v.is_null() && v != &json!("") && v != &json!([]))
    };
    if has("HostnameConfig") {
        if set("/machine/network/hostname") {
            return Err(RenderError::Invalid(
                "a HostnameConfig document and machine.network.hostname both set the hostname"
                    .into(),
            ));
        }
        if v1alpha1.pointer("/machine/features/stableHostname") == Some(&json!(true)) {
            return Err(RenderError::Invalid(
                "a HostnameConfig document conflicts with machine.features.stableHostname".into(),
            ));
        }
    }
    if has("ResolverConfig") && set("/machine/network/nameservers") {
        return Err(RenderError::Invalid(
            "a ResolverConfig document and machine.network.nameservers both set nameservers".into(),
        ));
    }
    for doc in docs {
        match kind_of(doc) {
            Some("EventSinkConfig") => {
                let endpoint = pointer_str(doc, "/endpoint").unwrap_or_default();
                let port = endpoint
                    .rsplit_once(':')
                    .filter(|(host, _)| !host.is_empty())
                    .and_then(|(_, port)| port.parse::<u16>().ok());
                if port.is_none() {
                    return Err(RenderError::Invalid(format!(
                        "EventSinkConfig endpoint '{endpoint}' must be host:port"
                    )));
                }
            }
            Some("KmsgLogConfig") => kmsg_log_rules(doc)?,
            _ => {}
        }
    }
    if docs
        .iter()
        .filter(|d| kind_of(d) == Some("EventSinkConfig"))
        .count()
        > 1
    {
        return Err(RenderError::Invalid(
            "more than one EventSinkConfig document (Talos takes one event sink)".into(),
        ));
    }
    if role != Role::Controlplane && has("Layer2VIPConfig") {
        return Err(RenderError::Invalid(
            "a VIP (Layer2VIPConfig) can only be configured on control planes".into(),
        ));
    }
    Ok(())
}

/// Talos's checks of a `KmsgLogConfig`: a name, and a `tcp://` or `udp://` URL with a port and
/// no path.
fn kmsg_log_rules(doc: &Value) -> Result<(), RenderError> {
    let name = pointer_str(doc, "/name").unwrap_or_default();
    let url = pointer_str(doc, "/url").unwrap_or_default();
    let fail = |why: &str| {
        Err(RenderError::Invalid(format!(
            "KmsgLogConfig '{name}': {why}"
        )))
    };
    if name.is_empty() {
        return fail("name is required");
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return fail("url is required (tcp://host:port or udp://host:port)");
    };
    if scheme != "tcp" && scheme != "udp" {
        return fail("url scheme must be tcp:// or udp://");
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if !path.is_empty() {
        return fail("url path must be empty");
    }
    let port = authority
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse::<u16>().ok());
    if port.is_none() {
        return fail("url port is required");
    }
    Ok(())
}

fn pointer_str<'a>(doc: &'a Value, path: &str) -> Option<&'a str> {
    doc.pointer(path)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A few of Talos's validation rules (v1alpha1_validation.go) that matter for metal nodes;
/// from 1.14 the endpoint, install and DNS domain are read from their documents in `docs`.
fn talos_rules(
    doc: &Value,
    role: Role,
    contract: Contract,
    docs: &[Value],
) -> Result<(), RenderError> {
    let of_kind = |kind: &str, path: &str| {
        docs.iter()
            .filter(|d| kind_of(d) == Some(kind))
            .find_map(|d| pointer_str(d, path))
    };
    let documents = contract == Contract::V1_14;
    let fail = |m: &str| Err(RenderError::Invalid(m.to_string()));
    let machine_type = pointer_str(doc, "/machine/type").unwrap_or_default();
    let expected = if role == Role::Controlplane {
        "controlplane"
    } else {
        "worker"
    };
    if machine_type != expected {
        return Err(RenderError::Invalid(format!(
            "machine.type is '{machine_type}' but the machine is a {expected}"
        )));
    }
    if documents {
        if of_kind("KubeClusterConfig", "/endpoint").is_none() {
            return fail("a KubeClusterConfig document with the endpoint is required");
        }
        let install_documents = docs
            .iter()
            .filter(|d| kind_of(d) == Some("UnattendedInstallConfig"))
            .count();
        if install_documents > 1 {
            return fail("more than one UnattendedInstallConfig document");
        }
        if install_documents == 1
            && of_kind(
                "UnattendedInstallConfig",
                "/provisioning/diskSelector/match",
            )
            .is_none()
        {
            return fail("UnattendedInstallConfig needs provisioning.diskSelector.match");
        }
    } else {
        if pointer_str(doc, "/cluster/controlPlane/endpoint").is_none() {
            return fail("cluster.controlPlane.endpoint is required");
        }
        if pointer_str(doc, "/machine/install/disk").is_none()
            && doc.pointer("/machine/install/diskSelector").is_none()
        {
            return fail(
                "machine.install.disk or machine.install.diskSelector is required on metal",
            );
        }
    }
    let domain = if documents {
        of_kind("KubeNetworkConfig", "/dnsDomain")
    } else {
        pointer_str(doc, "/cluster/network/dnsDomain")
    };
    if let Some(domain) = domain {
        if !is_dns_name(domain) {
            return Err(RenderError::Invalid(format!(
                "cluster.network.dnsDomain '{domain}' is not a DNS name"
            )));
        }
    }
    if pointer_str(doc, "/machine/ca/crt").is_none() {
        return fail("machine.ca.crt is required");
    }
    if role == Role::Controlplane {
        if pointer_str(doc, "/machine/ca/key").is_none() {
            return fail("a control plane needs machine.ca.key");
        }
    } else {
        if pointer_str(doc, "/machine/ca/key").is_some() {
            return fail("a worker must not carry machine.ca.key");
        }
        if doc.pointer("/cluster/etcd").is_some() {
            return fail("cluster.etcd is only for control planes");
        }
        let has_vip = doc
            .pointer("/machine/network/interfaces")
            .and_then(Value::as_array)
            .is_some_and(|list| list.iter().any(|i| i.get("vip").is_some()));
        if has_vip {
            return fail("a VIP can only be configured on control planes");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripping_annotations_keeps_what_validation_reads() {
        let mut schema = json!({
            "description": "a machine",
            "markdownDescription": "a *machine*",
            "type": "object",
            "properties": {
                "description": {"type": "string", "description": "free text"},
                "kind": {"enum": [{"description": "data, not a keyword"}]},
                "disks": {"type": "array", "items": {"x-intellij-html-description": "<p>", "type": "string"}}
            },
            "$defs": {"description": {"type": "integer", "description": "a definition's"}}
        });
        strip_annotations(&mut schema);
        assert_eq!(
            schema,
            json!({
                "type": "object",
                "properties": {
                    "description": {"type": "string"},
                    "kind": {"enum": [{"description": "data, not a keyword"}]},
                    "disks": {"type": "array", "items": {"type": "string"}}
                },
                "$defs": {"description": {"type": "integer"}}
            })
        );
    }

    /// Kinds compile on first use, so a kind no render has used yet must compile too: every
    /// kind of every line's schema, and the whole-schema fallback.
    #[test]
    fn every_kind_of_every_line_compiles() {
        for contract in [
            Contract::V1_8,
            Contract::V1_12,
            Contract::V1_13,
            Contract::V1_14,
        ] {
            let validators = validators(contract).expect("schema loads");
            assert!(validators.v1alpha1().is_ok(), "{contract:?} v1alpha1");
            assert!(
                validators.any_document().is_ok(),
                "{contract:?} any document"
            );
            for kind in validators.kinds.keys() {
                let compiled = validators.kind(kind).expect("listed kind");
                assert!(
                    compiled.is_ok(),
                    "{contract:?} {kind}: {:?}",
                    compiled.err()
                );
            }
            if contract >= Contract::V1_12 {
                assert!(validators.kind("HostnameConfig").is_some(), "{contract:?}");
            }
            assert!(validators.kind("NoSuchConfig").is_none());
        }
        assert!(validators(Contract::V1_14)
            .expect("v1.14 loads")
            .kind("UnattendedInstallConfig")
            .is_some());
    }
}
