//! Boot scripts: the chain script every iPXE fetches first, and each machine's own script (wait
//! for a role, boot Talos, or go to its disk), reused while nothing it was made from changed.

use std::net::SocketAddr;

use askama::Template;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Deserialize;

use super::{address_owner, parse_mac, BootError};
use crate::assets::Availability;
use crate::db::Observation;
use crate::model::lifecycle::Step;
use crate::model::{DiskHandoff, EventKind, Lifecycle, Mac, Machine, Role};
use crate::state::AppState;
use crate::support::metrics::Metrics;
use crate::talos::{self, Arch};

#[derive(Template)]
#[template(path = "ipxe/chain.ipxe")]
struct ChainScript<'a> {
    base: &'a str,
}

#[derive(Template)]
#[template(path = "ipxe/wait.ipxe")]
struct WaitScript<'a> {
    mac: &'a str,
    retry_secs: u32,
    retry_url: &'a str,
}

#[derive(Template)]
#[template(path = "ipxe/install.ipxe")]
struct InstallScript<'a> {
    mac: &'a str,
    version: &'a str,
    arch: &'a str,
    role: &'a str,
    hostname: &'a str,
    kernel_url: &'a str,
    initrd_url: &'a str,
    initrd_name: &'a str,
    args: &'a str,
    retry_secs: u32,
}

#[derive(Template)]
#[template(path = "ipxe/missing.ipxe")]
struct MissingScript<'a> {
    version: &'a str,
    arch: &'a str,
    /// "are missing" or "are out of service"
    problem: &'a str,
    missing: &'a str,
    retry_secs: u32,
    retry_url: &'a str,
}

#[derive(Template)]
#[template(path = "ipxe/too_long.ipxe")]
struct TooLongScript<'a> {
    version: &'a str,
    arch: &'a str,
    problem: &'a str,
    retry_secs: u32,
    retry_url: &'a str,
}

#[derive(Template)]
#[template(path = "ipxe/disk.ipxe")]
struct DiskScript<'a> {
    mac: &'a str,
    sanboot: bool,
}

/// An iPXE script response, its bytes counted as `http_bytes{asset="script"}`.
fn script(metrics: &Metrics, body: Result<String, askama::Error>) -> Result<Response, BootError> {
    let body = body.map_err(|e| BootError::Internal(e.to_string()))?;
    metrics.http_sent("script", body.len() as u64);
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"))],
        body,
    )
        .into_response())
}

pub(super) async fn boot_chain_get(State(state): State<AppState>) -> Result<Response, BootError> {
    let base = state.config.boot.http_base();
    script(&state.metrics, ChainScript { base: &base }.render())
}

#[derive(Debug, Deserialize)]
pub(super) struct MachineQuery {
    mac: String,
    #[serde(default)]
    uuid: Option<String>,
    #[serde(default)]
    serial: Option<String>,
    #[serde(default)]
    arch: Option<String>,
}

/// What a machine's script request says, checked: the only way the handler reads its query.
pub(super) struct Asked {
    mac: Mac,
    buildarch: &'static str,
    uuid: Option<String>,
    serial: Option<String>,
}

impl MachineQuery {
    pub(super) fn read(self) -> Result<Asked, BootError> {
        Ok(Asked {
            mac: parse_mac(&self.mac)?,
            buildarch: ipxe_buildarch(self.arch.as_deref())?,
            uuid: clean_ident(self.uuid),
            serial: clean_ident(self.serial),
        })
    }
}

/// Keeps only what a SMBIOS UUID or serial may sensibly contain.
fn clean_ident(value: Option<String>) -> Option<String> {
    value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .filter(|v| v.chars().all(|c| c.is_ascii_graphic() || c == ' '))
}

/// iPXE's `${buildarch}` values. The query parameter goes back into the retry URL of a
/// script, so only these pass: anything else (a newline and an iPXE command, say) is refused.
const IPXE_BUILDARCHES: &[&str] = &[
    "x86_64", "i386", "arm64", "aarch64", "arm32", "riscv64", "riscv32", "loong64",
];

fn ipxe_buildarch(text: Option<&str>) -> Result<&'static str, BootError> {
    match text {
        None | Some("") => Ok("x86_64"),
        Some(text) => IPXE_BUILDARCHES
            .iter()
            .find(|known| **known == text)
            .copied()
            .ok_or_else(|| {
                BootError::BadRequest(format!(
                    "arch must be one of iPXE's buildarch values ({})",
                    IPXE_BUILDARCHES.join(", ")
                ))
            }),
    }
}

pub(super) async fn boot_machine_get(
    State(state): State<AppState>,
    from: Option<Extension<ConnectInfo<SocketAddr>>>,
    Query(q): Query<MachineQuery>,
) -> Result<Response, BootError> {
    let from = from.map(|Extension(ConnectInfo(addr))| addr);
    let Asked {
        mac,
        buildarch,
        uuid,
        serial,
    } = q.read()?;
    // The snapshot generation is read before the machine, so a script made from a row that
    // changes meanwhile is dropped with the snapshot that the change brings.
    let generation = (
        state.inventory.snapshot().generation,
        state.images.records_written(),
        state.db.materials_moves(),
    );
    let now = state.recorder.now_ms();
    if let Some((hit, record)) = state.scripts.get(mac, buildarch, generation, now) {
        if record {
            state.recorder.observe(Observation {
                mac,
                at: now,
                kind: EventKind::ScriptServed,
                detail: hit.detail.clone(),
                arch: None,
                smbios_uuid: uuid,
                serial,
            });
        }
        state.metrics.http_sent("script", hit.body.len() as u64);
        return Ok(script_bytes(hit.body));
    }
    let arch = Arch::from_ipxe_buildarch(buildarch);
    let machine = state
        .db
        .get_machine(mac)
        .await
        .map_err(|e| BootError::Internal(e.to_string()))?;
    // An installed machine's network boot is weighed every time (the wipe decision reads who
    // asks and when), so its script is never reused.
    let cacheable = machine
        .as_ref()
        .is_none_or(|m| m.role == Role::Unassigned || !m.installed || m.diskless);
    let boot = &state.config.boot;
    let base = boot.http_base();
    let retry_url = format!(
        "{base}/machine.ipxe?mac={}&arch={}",
        mac.hyphenated(),
        buildarch
    );
    let mac_text = mac.to_string();
    let (detail, response) = match machine {
        // A diskless machine has no disk to hand off to: every network boot gets Talos again,
        // and none is watched as a wipe.
        Some(m)
            if m.role != Role::Unassigned
                && m.installed
                && !m.diskless
                && !reinstall_now(&state, &m, from).await? =>
        {
            let detail = format!("installed: disk hand-off {}", m.disk_handoff);
            let response = match m.disk_handoff {
                DiskHandoff::Http404 => Err(BootError::NotFound),
                DiskHandoff::Exit => script(
                    &state.metrics,
                    DiskScript {
                        mac: &mac_text,
                        sanboot: false,
                    }
                    .render(),
                ),
                DiskHandoff::Sanboot => script(
                    &state.metrics,
                    DiskScript {
                        mac: &mac_text,
                        sanboot: true,
                    }
                    .render(),
                ),
            };
            (detail, response)
        }
        Some(m) if m.role != Role::Unassigned => {
            let version =
                crate::assets::machine_version(&state.db, &m, &state.config.boot.talos_version)
                    .await
                    .map_err(|e| BootError::Internal(e.to_string()))?;
            let availability = state
                .images
                .availability(&version, arch)
                .await
                .map_err(|e| BootError::Internal(e.to_string()))?;
            let asset_args = state
                .images
                .kernel_args(&version, arch)
                .await
                .map_err(|e| BootError::Internal(e.to_string()))?;
            let target = Target {
                version: &version,
                arch,
                asset_args: &asset_args,
            };
            let (detail, response) =
                install_script(&state, &m, &target, availability, &retry_url, &mac_text);
            // Talos was handed out only by a script that boots it (not one that explains why
            // it cannot: missing assets, a command line the kernel would cut).
            let talos_served = detail.starts_with("install ") || detail.starts_with("run ");
            // Only a change is written: a machine retrying its script while it boots must not
            // take SQLite's write lock on every request.
            if response.is_ok() && talos_served && m.state != Lifecycle::Booting {
                state
                    .db
                    .step(
                        mac,
                        Step::TalosHandedOut,
                        "install script served",
                        state.recorder.now_ms(),
                    )
                    .await
                    .map_err(|e| BootError::Internal(e.to_string()))?;
            }
            (detail, response)
        }
        _ => (
            "waiting for assignment".to_string(),
            script(
                &state.metrics,
                WaitScript {
                    mac: &mac_text,
                    retry_secs: boot.retry_secs,
                    retry_url: &retry_url,
                }
                .render(),
            ),
        ),
    };
    tracing::info!(mac = %mac, outcome = %detail, "boot script served");
    state.recorder.observe(Observation {
        mac,
        at: state.recorder.now_ms(),
        kind: EventKind::ScriptServed,
        detail: detail.clone(),
        arch: None,
        smbios_uuid: uuid,
        serial,
    });
    // Only scripts that boot Talos or wait for a role are reused: one that says assets are
    // missing is made again at every request, so assets added by another process (the CLI)
    // count at once.
    let reusable = detail.starts_with("install ")
        || detail.starts_with("run ")
        || detail == "waiting for assignment";
    match response {
        Ok(response) if cacheable && reusable && response.status() == StatusCode::OK => {
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .map_err(|e| BootError::Internal(e.to_string()))?;
            state.scripts.put(
                mac,
                buildarch,
                crate::state::CachedScript {
                    generation,
                    made_ms: now,
                    detail,
                    body: body.clone(),
                    recorded_ms: now,
                },
            );
            Ok(script_bytes(body))
        }
        other => other,
    }
}

/// A boot script's bytes as a response.
fn script_bytes(body: bytes::Bytes) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"))],
        body,
    )
        .into_response()
}

/// An installed machine is network-booting: hand it to its disk, unless this boot shows
/// its disk does not boot (then it is reinstalled, and gets the install script).
async fn reinstall_now(
    state: &AppState,
    m: &Machine,
    from: Option<SocketAddr>,
) -> Result<bool, BootError> {
    use crate::model::lifecycle::Requester;
    let requester = match from.map(|from| address_owner(state, from)) {
        Some(Ok(Some(seen))) if seen == m.mac => Requester::Itself,
        Some(Ok(Some(seen))) => Requester::Other(seen),
        _ => Requester::Unknown,
    };
    crate::orchestrator::installed_machine_netbooted(
        &state.db,
        &state.orchestrator,
        m,
        requester,
        state.recorder.now_ms(),
    )
    .await
    .map_err(|e| BootError::Internal(e.to_string()))
}

/// What a machine boots: the selected Talos version (pin, cluster, default), its
/// architecture, and the kernel arguments its assets' schematic bakes in.
struct Target<'a> {
    version: &'a str,
    arch: Arch,
    asset_args: &'a [String],
}

/// The kernel command line of an install boot of `m` (`talos::kernel::Additions`, the one
/// assembly every check shares): the version's base arguments and config URL, then the
/// schematic's extra arguments, bootplane's report-in arguments, and the operator's
/// `--kernel-args` last.
fn command_line(
    boot: &crate::config::BootConfig,
    target: &Target<'_>,
    mac: Mac,
) -> talos::kernel::CommandLine {
    boot.kernel_additions()
        .command_line(target.version, target.arch, mac, target.asset_args)
}

fn install_script(
    state: &AppState,
    m: &Machine,
    target: &Target<'_>,
    availability: Availability,
    retry_url: &str,
    mac_text: &str,
) -> (String, Result<Response, BootError>) {
    let boot = &state.config.boot;
    let (version, arch) = (target.version, target.arch);
    let unavailable = match availability {
        Availability::Available => None,
        Availability::Missing(files) => Some(("are missing", files.join(" "))),
        Availability::OutOfService(reason) => Some(("are out of service", reason)),
    };
    if let Some((problem, missing)) = unavailable {
        tracing::warn!(mac = %m.mac, problem, detail = %missing, "boot assets not available");
        return (
            format!("boot assets {problem}: {missing}"),
            script(
                &state.metrics,
                MissingScript {
                    version,
                    arch: arch.as_str(),
                    problem,
                    missing: &missing,
                    retry_secs: boot.retry_secs,
                    retry_url,
                }
                .render(),
            ),
        );
    }
    let command_line = command_line(boot, target, m.mac);
    if let Err(too_long) = command_line.check() {
        // Served cut, the arguments past the limit would vanish without a word.
        let problem = too_long.to_string();
        tracing::warn!(mac = %m.mac, %version, problem, "kernel command line too long");
        return (
            problem.clone(),
            script(
                &state.metrics,
                TooLongScript {
                    version,
                    arch: arch.as_str(),
                    problem: &problem,
                    retry_secs: boot.retry_secs,
                    retry_url,
                }
                .render(),
            ),
        );
    }
    let args = command_line.args();
    let base = boot.http_base();
    let asset = |file: String| format!("{base}/assets/{version}/{file}?mac={}", m.mac);
    let hostname = m.hostname.clone().unwrap_or_default();
    // The boot handler reads these first words: only a detail starting so booted Talos.
    let what = if m.diskless { "run" } else { "install" };
    let diskless = if m.diskless { ", diskless" } else { "" };
    (
        format!(
            "{what} Talos {version} {} as {}{diskless}",
            arch.as_str(),
            m.role
        ),
        script(
            &state.metrics,
            InstallScript {
                mac: mac_text,
                version,
                arch: arch.as_str(),
                role: m.role.as_str(),
                hostname: &hostname,
                kernel_url: &asset(arch.kernel_file()),
                initrd_url: &asset(arch.initramfs_file()),
                initrd_name: &arch.initramfs_file(),
                args: &args,
                retry_secs: boot.retry_secs,
            }
            .render(),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot() -> crate::config::BootConfig {
        crate::config::BootConfig {
            advertise_ip: std::net::Ipv4Addr::new(10, 0, 0, 2),
            http_port: 8080,
            ipxe_dir: std::path::PathBuf::from("/ipxe"),
            efi_binary: crate::model::EfiBinary::IpxeEfi,
            arm64_binary: "ipxe-arm64.efi".into(),
            images_dir: std::path::PathBuf::from("/images"),
            talos_version: "v1.11.6".into(),
            extra_kernel_args: vec!["console=ttyS1,115200".into()],
            retry_secs: 10,
            tftp_block_limit: 1468,
            tftp_window_limit: 16,
            config_access: crate::config::ConfigAccess::Mac,
            events_port: Some(4002),
            kernel_log_port: None,
            boot_log_lines: 5000,
        }
    }

    #[test]
    fn install_args_follow_the_selected_version_with_the_operators_last() {
        let schematic = vec!["net.ifnames=0".to_string()];
        let target = Target {
            version: "v1.10.9",
            arch: Arch::Amd64,
            asset_args: &schematic,
        };
        let mac = Mac([0x52, 0x54, 0, 0, 0, 1]);
        let args = command_line(&boot(), &target, mac).args();
        let words: Vec<&str> = args.split(' ').collect();
        // v1.10 has the IMA arguments that v1.11 dropped.
        assert!(words.contains(&"ima_template=ima-ng"), "{args}");
        assert!(
            words.contains(&"talos.config=http://10.0.0.2:8080/config?mac=52:54:00:00:00:01"),
            "{args}"
        );
        let at = |w: &str| words.iter().position(|x| x.starts_with(w)).unwrap();
        assert!(at("talos.config=") < at("net.ifnames=0"), "{args}");
        assert!(at("net.ifnames=0") < at("talos.events.sink="), "{args}");
        assert_eq!(words.last(), Some(&"console=ttyS1,115200"), "{args}");
        let v11 = Target {
            version: "v1.11.6",
            ..target
        };
        assert!(!command_line(&boot(), &v11, mac)
            .args()
            .contains("ima_template"));
    }
}
