//! Boot asset inputs shared by the CLI, the API and the web UI: one parse of an "add" request
//! (which source, which version and arch, which checksums) and of a schematic, with errors per
//! field.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Errors, OpsError};
use crate::assets::{self, AddRequest, Customization, SourceSpec};

/// An asset to add, as an operator gives it. Exactly one source: `schematic` (Image Factory),
/// `release`, or `kernel_path` with `initramfs_path` (files on the appliance).
#[derive(Clone, Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageInput {
    /// Talos version, e.g. v1.11.6
    pub version: Option<String>,
    /// amd64 or arm64 (default amd64)
    pub arch: Option<String>,
    /// Image Factory schematic ID (64 hex digits)
    pub schematic: Option<String>,
    /// The release's vmlinuz-<arch> and initramfs-<arch>.xz
    pub release: Option<bool>,
    /// A kernel file on the appliance (with initramfs_path; the CLI only)
    pub kernel_path: Option<String>,
    /// An initramfs file on the appliance (with kernel_path; the CLI only)
    pub initramfs_path: Option<String>,
    /// SHA-256 the kernel must have
    pub sha256_kernel: Option<String>,
    /// SHA-256 the initramfs must have
    pub sha256_initramfs: Option<String>,
}

/// Where factory and release downloads come from.
#[derive(Clone, Debug)]
pub struct Bases<'a> {
    pub factory_url: &'a str,
    pub release_url: &'a str,
}

/// Whether local files may be named: on the appliance's command line yes; over the network
/// no, since whatever they name would be served to anyone on `/assets/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalFiles {
    Allowed,
    Refused,
}

fn given(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Parses an add request, collecting one error per bad field.
pub fn parse_image_input(
    input: &ImageInput,
    bases: &Bases<'_>,
    local: LocalFiles,
) -> Result<AddRequest, OpsError> {
    let mut errors = Errors::default();
    let version = match given(&input.version) {
        Some(v) => match assets::validate_version(&v) {
            Ok(()) => v,
            Err(e) => {
                errors.add("version", e.to_string());
                v
            }
        },
        None => {
            errors.add("version", "a Talos version such as v1.11.6 is needed");
            String::new()
        }
    };
    let arch = match assets::parse_arch(given(&input.arch).as_deref().unwrap_or("amd64")) {
        Ok(a) => Some(a),
        Err(e) => {
            errors.add("arch", e.to_string());
            None
        }
    };
    let schematic = given(&input.schematic);
    let release = input.release.unwrap_or(false);
    let (kernel, initramfs) = (given(&input.kernel_path), given(&input.initramfs_path));
    let source = match (schematic, release, kernel, initramfs) {
        (Some(schematic), false, None, None) => {
            if let Err(e) = assets::validate_schematic(&schematic) {
                errors.add("schematic", e.to_string());
            }
            Some(SourceSpec::Factory {
                base: bases.factory_url.to_string(),
                schematic,
            })
        }
        (None, true, None, None) => Some(SourceSpec::Release {
            base: bases.release_url.to_string(),
        }),
        (None, false, Some(_), Some(_))
        | (None, false, Some(_), None)
        | (None, false, None, Some(_))
            if local == LocalFiles::Refused =>
        {
            errors.add(
                "kernel_path",
                "local files are added on the appliance itself: bootplane images add --kernel FILE --initramfs FILE",
            );
            None
        }
        (None, false, Some(kernel), Some(initramfs)) => Some(SourceSpec::Local {
            kernel: PathBuf::from(kernel),
            initramfs: PathBuf::from(initramfs),
        }),
        (None, false, Some(_), None) => {
            errors.add("initramfs_path", "a kernel file needs its initramfs file");
            None
        }
        (None, false, None, Some(_)) => {
            errors.add("kernel_path", "an initramfs file needs its kernel file");
            None
        }
        _ => {
            errors.add(
                "source",
                "give one source: a schematic ID, the release, or a kernel and initramfs file",
            );
            None
        }
    };
    let mut sha = |field: &str, v: &Option<String>| match given(v) {
        Some(text) => match assets::parse_sha256(&text) {
            Ok(s) => Some(s),
            Err(e) => {
                errors.add(field, e.to_string());
                None
            }
        },
        None => None,
    };
    let expect_kernel = sha("sha256_kernel", &input.sha256_kernel);
    let expect_initramfs = sha("sha256_initramfs", &input.sha256_initramfs);
    errors.into_result()?;
    match (arch, source) {
        (Some(arch), Some(source)) => Ok(AddRequest {
            version,
            arch,
            source,
            expect_kernel,
            expect_initramfs,
        }),
        _ => Err(OpsError::field("source", "no source")),
    }
}

/// A schematic to create at the Image Factory, as an operator gives it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SchematicInput {
    /// Official system extensions, e.g. siderolabs/iscsi-tools
    #[serde(default)]
    pub extensions: Vec<String>,
    /// Extra kernel arguments baked into the schematic, e.g. net.ifnames=0
    #[serde(default)]
    pub kernel_args: Vec<String>,
}

/// Parses a schematic: every extension and kernel argument checked, errors per field. Items
/// may also be given space- or comma-separated (as a form field holds them).
pub fn parse_schematic_input(
    input: &SchematicInput,
    additions: &crate::talos::kernel::Additions,
) -> Result<Customization, OpsError> {
    let mut errors = Errors::default();
    let split = |items: &[String]| -> Vec<String> {
        items
            .iter()
            .flat_map(|i| i.split([',', ' ', '\n', '\r', '\t']))
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    let extensions = split(&input.extensions);
    let kernel_args: Vec<String> = input
        .kernel_args
        .iter()
        .flat_map(|i| i.split_whitespace())
        .map(str::to_string)
        .collect();
    for e in &extensions {
        if let Err(err) = assets::validate_extension(e) {
            errors.add("extensions", err.to_string());
        }
    }
    for a in &kernel_args {
        if let Err(err) = assets::validate_kernel_arg(a) {
            errors.add("kernel_args", err.to_string());
        }
    }
    if !errors.has("kernel_args") {
        // Arguments no machine could boot with (on any line or architecture) are refused.
        if let Err(e) = additions.shortest(&kernel_args).check() {
            errors.add("kernel_args", e.to_string());
        }
    }
    errors.into_result()?;
    Ok(Customization {
        extensions,
        kernel_args,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASES: Bases<'static> = Bases {
        factory_url: "http://factory.local",
        release_url: "http://release.local",
    };

    #[test]
    fn one_source_is_needed_and_each_bad_field_is_named() {
        let err =
            parse_image_input(&ImageInput::default(), &BASES, LocalFiles::Allowed).unwrap_err();
        assert!(err.for_field("version").is_some(), "{err}");
        assert!(err.for_field("source").is_some(), "{err}");
        let input = ImageInput {
            version: Some("v1.11.6".into()),
            arch: Some("x86".into()),
            schematic: Some("abc".into()),
            sha256_kernel: Some("xyz".into()),
            ..Default::default()
        };
        let err = parse_image_input(&input, &BASES, LocalFiles::Allowed).unwrap_err();
        for field in ["arch", "schematic", "sha256_kernel"] {
            assert!(err.for_field(field).is_some(), "{field}: {err}");
        }
        let two = ImageInput {
            version: Some("v1.11.6".into()),
            schematic: Some("a".repeat(64)),
            release: Some(true),
            ..Default::default()
        };
        let err = parse_image_input(&two, &BASES, LocalFiles::Allowed).unwrap_err();
        assert!(err.for_field("source").is_some(), "{err}");
    }

    #[test]
    fn factory_release_and_local_sources_parse_and_local_files_can_be_refused() {
        let factory = ImageInput {
            version: Some("v1.11.6".into()),
            schematic: Some("a".repeat(64)),
            ..Default::default()
        };
        let req = parse_image_input(&factory, &BASES, LocalFiles::Refused).unwrap();
        assert!(
            matches!(req.source, SourceSpec::Factory { ref base, .. } if base == "http://factory.local")
        );
        assert_eq!(req.arch, crate::talos::Arch::Amd64);
        let local = ImageInput {
            version: Some("v1.11.6".into()),
            kernel_path: Some("/tmp/k".into()),
            initramfs_path: Some("/tmp/i".into()),
            ..Default::default()
        };
        assert!(matches!(
            parse_image_input(&local, &BASES, LocalFiles::Allowed)
                .unwrap()
                .source,
            SourceSpec::Local { .. }
        ));
        let err = parse_image_input(&local, &BASES, LocalFiles::Refused).unwrap_err();
        assert!(err.for_field("kernel_path").is_some(), "{err}");
    }

    #[test]
    fn schematic_items_are_checked_and_split() {
        let offline = crate::talos::kernel::Additions::offline();
        let c = parse_schematic_input(
            &SchematicInput {
                extensions: vec!["siderolabs/iscsi-tools, siderolabs/util-linux-tools".into()],
                kernel_args: vec!["net.ifnames=0 talos.dashboard.disabled=1".into()],
            },
            &offline,
        )
        .unwrap();
        assert_eq!(c.extensions.len(), 2);
        assert_eq!(c.kernel_args.len(), 2);
        let err = parse_schematic_input(
            &SchematicInput {
                extensions: vec!["../etc".into()],
                kernel_args: vec!["a\"b".into()],
            },
            &offline,
        )
        .unwrap_err();
        assert!(err.for_field("extensions").is_some(), "{err}");
        assert!(err.for_field("kernel_args").is_some(), "{err}");
    }
}
