//! Image Factory schematics: the document, creating one, and the kernel arguments it bakes in.

use super::download::{client, transfer, transfer_error};
use super::{validate_schematic, Images, ImagesError};
use crate::talos::Arch;

/// What a schematic customises: system extensions and extra kernel arguments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Customization {
    /// Official extensions, e.g. `siderolabs/iscsi-tools`
    pub extensions: Vec<String>,
    pub kernel_args: Vec<String>,
}

/// The Image Factory's schematic document (`POST /schematics` takes it as YAML).
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schematic {
    #[serde(default)]
    pub customization: SchematicCustomization,
}

#[derive(Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SchematicCustomization {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_kernel_args: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_extensions: Option<SystemExtensions>,
}

#[derive(Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SystemExtensions {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub official_extensions: Vec<String>,
}

/// An official extension name: `siderolabs/iscsi-tools` (lowercase, digits, `-._/`).
pub fn validate_extension(name: &str) -> Result<(), ImagesError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_' | '/')
        })
        && !name.contains("..");
    if ok {
        Ok(())
    } else {
        Err(ImagesError::Invalid(format!(
            "extension '{name}' must look like siderolabs/iscsi-tools"
        )))
    }
}

/// One kernel argument: printable, no spaces, no quotes.
pub fn validate_kernel_arg(arg: &str) -> Result<(), ImagesError> {
    let ok = !arg.is_empty()
        && arg.len() <= 1024
        && arg
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\\' | '\''));
    if ok {
        Ok(())
    } else {
        Err(ImagesError::Invalid(format!(
            "kernel argument '{arg}' must be printable ASCII without spaces or quotes"
        )))
    }
}

impl Customization {
    /// The YAML the Image Factory takes.
    pub fn to_yaml(&self) -> Result<String, ImagesError> {
        for e in &self.extensions {
            validate_extension(e)?;
        }
        for a in &self.kernel_args {
            validate_kernel_arg(a)?;
        }
        let schematic = Schematic {
            customization: SchematicCustomization {
                extra_kernel_args: self.kernel_args.clone(),
                system_extensions: (!self.extensions.is_empty()).then(|| SystemExtensions {
                    official_extensions: self.extensions.clone(),
                }),
            },
        };
        serde_yaml_ng::to_string(&schematic).map_err(|e| ImagesError::Internal(e.to_string()))
    }
}

/// Creates (or finds: IDs are content hashes) a schematic at the Image Factory and returns
/// its ID.
pub async fn create_schematic(base: &str, c: &Customization) -> Result<String, ImagesError> {
    let body = c.to_yaml()?;
    let url = format!("{}/schematics", base.trim_end_matches('/'));
    let response = client()?
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/yaml")
        .body(body)
        .send()
        .await
        .map_err(|e| transfer_error(&url, e))?;
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(ImagesError::Status { url, status });
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        id: String,
    }
    let answer: Answer = response
        .json()
        .await
        .map_err(|e| transfer(&url, format!("unexpected answer: {e}")))?;
    validate_schematic(&answer.id)
        .map_err(|_| transfer(&url, format!("unexpected schematic ID '{}'", answer.id)))?;
    Ok(answer.id)
}

/// The extra kernel arguments a schematic bakes in: the factory's
/// `/image/<schematic>/<version>/cmdline-metal-<arch>` minus what bootplane puts on every
/// command line for that version. A factory (or mirror) without that file gives none.
async fn schematic_args(
    base: &str,
    schematic: &str,
    version: &str,
    arch: Arch,
) -> Result<Vec<String>, ImagesError> {
    let url = format!(
        "{}/image/{schematic}/{version}/cmdline-metal-{}",
        base.trim_end_matches('/'),
        arch.as_str()
    );
    let response = client()?
        .get(&url)
        .send()
        .await
        .map_err(|e| transfer_error(&url, e))?;
    match response.status().as_u16() {
        200 => {}
        404 => {
            tracing::warn!(
                url,
                "the factory has no cmdline for this schematic: no extra kernel arguments recorded"
            );
            return Ok(Vec::new());
        }
        status => return Err(ImagesError::Status { url, status }),
    }
    let text = response.text().await.map_err(|e| transfer_error(&url, e))?;
    Ok(extra_args(&text, version, arch))
}

/// The arguments of a factory cmdline that bootplane's base command line for `version` and
/// `arch` does not already have.
pub fn extra_args(cmdline: &str, version: &str, arch: Arch) -> Vec<String> {
    let base = crate::talos::kernel_args(version, arch, "", &[]);
    let bare = |a: &str| a.trim_end_matches('=').to_string();
    let base: Vec<String> = base.iter().map(|a| bare(a)).collect();
    cmdline
        .split_whitespace()
        .filter(|a| !base.contains(&bare(a)))
        .filter(|a| validate_kernel_arg(a).is_ok())
        .map(str::to_string)
        .collect()
}

impl Images {
    /// The extra kernel arguments of a factory schematic for `version` and `arch`, refused
    /// when they make a machine's command line longer than the kernel keeps.
    pub(super) async fn checked_schematic_args(
        &self,
        base: &str,
        schematic: &str,
        version: &str,
        arch: Arch,
    ) -> Result<Vec<String>, ImagesError> {
        let args = schematic_args(base, schematic, version, arch).await?;
        self.additions
            .command_line(version, arch, crate::model::Mac([0; 6]), &args)
            .check()
            .map_err(|e| {
                ImagesError::Invalid(format!("schematic {schematic} for Talos {version}: {e}"))
            })?;
        Ok(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest as _, Sha256};

    #[test]
    fn the_vanilla_schematic_is_the_documented_yaml() {
        let yaml = Customization::default().to_yaml().unwrap();
        assert_eq!(yaml, "customization: {}\n");
        // The Image Factory's ID is the SHA-256 of this document.
        assert_eq!(
            hex::encode(Sha256::digest(yaml.as_bytes())),
            "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba"
        );
        let c = Customization {
            extensions: vec!["siderolabs/iscsi-tools".into()],
            kernel_args: vec!["net.ifnames=0".into()],
        };
        let parsed: Schematic = serde_yaml_ng::from_str(&c.to_yaml().unwrap()).unwrap();
        assert_eq!(
            parsed
                .customization
                .system_extensions
                .unwrap()
                .official_extensions,
            ["siderolabs/iscsi-tools"]
        );
        assert_eq!(parsed.customization.extra_kernel_args, ["net.ifnames=0"]);
        for bad in ["../x", "Siderolabs/x", "a b"] {
            let c = Customization {
                extensions: vec![bad.into()],
                ..Default::default()
            };
            assert!(c.to_yaml().is_err(), "{bad}");
        }
        let c = Customization {
            kernel_args: vec!["a b".into()],
            ..Default::default()
        };
        assert!(c.to_yaml().is_err());
    }

    #[test]
    fn a_factory_cmdline_gives_only_the_schematics_own_arguments() {
        let cmdline = "talos.platform=metal console=tty0 init_on_alloc=1 slab_nomerge pti=on \
            consoleblank=0 nvme_core.io_timeout=4294967295 printk.devkmsg=on selinux=1 \
            net.ifnames=0 talos.dashboard.disabled=1\n";
        assert_eq!(
            extra_args(cmdline, "v1.11.6", Arch::Amd64),
            ["net.ifnames=0", "talos.dashboard.disabled=1"]
        );
    }
}
