//! The report-in documents: bootplane's event sink and kernel log receivers.

use serde_json::{json, Value};

use crate::model::ReportTargets;

use super::base::document;
use super::kind_of;

/// `EventSinkConfig` and `KmsgLogConfig` documents for bootplane's receivers, so a node keeps
/// reporting after an install whose bootloader drops the extra kernel arguments (Talos's UEFI
/// installs with systemd-boot, and GRUB with `grubUseUKICmdline` from 1.12). Talos takes the
/// document's event sink over the kernel argument (the same endpoint here) and drops a kernel
/// log URL given both ways, so a node booted with both sends once. An operator's patch that
/// adds its own event sink (Talos takes one) or a kernel log named like bootplane's wins.
pub(super) fn apply_report_targets(docs: &mut Vec<Value>, targets: &ReportTargets) {
    let has = |docs: &[Value], kind: &str, name: Option<&str>| {
        docs.iter().any(|d| {
            kind_of(d) == Some(kind)
                && name.is_none_or(|name| d.get("name").and_then(Value::as_str) == Some(name))
        })
    };
    if let Some(endpoint) = &targets.events_endpoint {
        if !has(docs, "EventSinkConfig", None) {
            docs.push(document("EventSinkConfig", json!({ "endpoint": endpoint })));
        }
    }
    if let Some(url) = targets
        .kernel_log_url
        .as_ref()
        .filter(|_| !has(docs, "KmsgLogConfig", Some(REPORT_LOG_NAME)))
    {
        docs.push(document(
            "KmsgLogConfig",
            json!({ "name": REPORT_LOG_NAME, "url": url }),
        ));
    }
}

/// The name of the `KmsgLogConfig` document that sends the kernel log to bootplane.
pub const REPORT_LOG_NAME: &str = "bootplane";
