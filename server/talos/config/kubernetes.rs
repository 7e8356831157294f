//! The Kubernetes versions each Talos line runs, and its default.

use crate::talos::minor_version;

use super::RenderError;

/// Default Kubernetes version per Talos minor (`DefaultKubernetesVersion` of its newest patch).
pub fn default_kubernetes_version(talos_version: &str) -> Option<&'static str> {
    match minor_version(talos_version)? {
        (1, 8) => Some("1.31.4"),
        (1, 9) => Some("1.32.4"),
        (1, 10) => Some("1.33.6"),
        (1, 11) => Some("1.34.1"),
        (1, 12) => Some("1.35.4"),
        (1, 13) => Some("1.36.3"),
        (1, 14) => Some("1.37.0-rc.0"),
        _ => None,
    }
}

/// major.minor.patch.
pub type Semver = (u32, u32, u32);

/// The Kubernetes versions a Talos line runs: `(line, oldest, first refused)`, as
/// `MinimumKubernetesVersion` and `MaximumKubernetesVersion` in Talos's
/// `pkg/machinery/compatibility/talos1<minor>/talos1<minor>.go`. Talos compares the
/// major.minor.patch of the version (pre-release ignored): older than the minimum is too old,
/// equal to or newer than the maximum (`1.<n>.99`) too new, so a line runs the minors from its
/// minimum to the one below its maximum's patch 99. Talos refuses a config whose Kubernetes
/// images carry a version outside the range when it loads it
/// (`pkg/machinery/config/types/v1alpha1/v1alpha1_validation.go`, `ValidateKubernetesImageTag`).
/// Sources, each the same in every patch of its line:
/// - 1.8: v1.8.4 `talos18/talos18.go` (1.26.0, 1.31.99)
/// - 1.9: v1.9.6 `talos19/talos19.go` (1.27.0, 1.32.99)
/// - 1.10: v1.10.9 `talos110/talos110.go` (1.28.0, 1.33.99)
/// - 1.11: v1.11.6 `talos111/talos111.go` (1.29.0, 1.34.99)
/// - 1.12: v1.12.11 `talos112/talos112.go` (1.30.0, 1.35.99)
/// - 1.13: v1.13.9 `talos113/talos113.go` (1.31.0, 1.36.99)
/// - 1.14: v1.14.0-rc.1 `talos114/talos114.go` (1.32.0, 1.37.99)
pub const KUBERNETES_RANGES: &[((u32, u32), Semver, Semver)] = &[
    ((1, 8), (1, 26, 0), (1, 31, 99)),
    ((1, 9), (1, 27, 0), (1, 32, 99)),
    ((1, 10), (1, 28, 0), (1, 33, 99)),
    ((1, 11), (1, 29, 0), (1, 34, 99)),
    ((1, 12), (1, 30, 0), (1, 35, 99)),
    ((1, 13), (1, 31, 0), (1, 36, 99)),
    ((1, 14), (1, 32, 0), (1, 37, 99)),
];

/// Refuses a Kubernetes version (`1.34.1`, `v1.35.0-rc.0`) the Talos line of `talos_version`
/// does not run, naming the range it does.
pub fn check_kubernetes_version(talos_version: &str, kubernetes: &str) -> Result<(), RenderError> {
    let line = minor_version(talos_version)
        .ok_or_else(|| RenderError::UnsupportedVersion(talos_version.to_string()))?;
    let (_, min, max) = KUBERNETES_RANGES
        .iter()
        .find(|(l, _, _)| *l == line)
        .ok_or_else(|| RenderError::UnsupportedVersion(talos_version.to_string()))?;
    let bare = kubernetes.trim_start_matches('v');
    let core = bare.split(['-', '+']).next().unwrap_or_default();
    let numbers: Vec<u32> = core.split('.').filter_map(|p| p.parse().ok()).collect();
    let version = match numbers[..] {
        [a, b, c] if core.split('.').count() == 3 => (a, b, c),
        _ => {
            return Err(RenderError::Input(format!(
                "Kubernetes version '{kubernetes}' must look like 1.34.1"
            )))
        }
    };
    if version < *min || version >= *max {
        return Err(RenderError::KubernetesUnsupported {
            kubernetes: bare.to_string(),
            talos: format!("{}.{}", line.0, line.1),
            oldest: format!("{}.{}", min.0, min.1),
            newest: format!("{}.{}", max.0, max.1),
        });
    }
    Ok(())
}
