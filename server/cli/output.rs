//! What the CLI writes: text and JSON on its output, and files holding secrets.

use std::io::Write;
use std::path::Path;

use super::CliError;

/// Writes `text` to `out`.
pub(super) fn write(out: &mut dyn Write, text: impl AsRef<str>) -> Result<(), CliError> {
    out.write_all(text.as_ref().as_bytes())
        .map_err(|e| CliError::Output(e.to_string()))
}

/// Writes `value` as pretty JSON, one document and a newline.
pub(super) fn write_json(
    out: &mut dyn Write,
    value: &impl serde::Serialize,
) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CliError::Output(e.to_string()))?;
    write(out, text + "\n")
}

/// Writes `text` to `path` (mode 0600, saying so on `out`), or to `out` without a path.
pub(super) fn emit(
    out: &mut dyn Write,
    path: Option<&Path>,
    text: &str,
    what: &str,
) -> Result<(), CliError> {
    match path {
        Some(path) => {
            write_private(path, text)?;
            write(
                out,
                format!("wrote {what} to {} (mode 0600)\n", path.display()),
            )
        }
        None => write(out, text),
    }
}

/// Writes a file readable by its owner only: everything written here holds secrets.
pub fn write_private(path: &Path, contents: &str) -> Result<(), CliError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| CliError::Output(format!("{}: {e}", path.display())))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .and_then(|_| file.write_all(contents.as_bytes()))
        .map_err(|e| CliError::Output(format!("{}: {e}", path.display())))
}

/// Reads a file, or standard input for `-`.
pub(super) fn read_input(path: &Path) -> Result<String, CliError> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| CliError::Invalid(format!("cannot read standard input: {e}")))?;
        Ok(text)
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| CliError::Invalid(format!("cannot read {}: {e}", path.display())))
    }
}
