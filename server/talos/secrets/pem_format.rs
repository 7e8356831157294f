//! PEM blocks as Go's `encoding/pem` writes and reads them.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use zeroize::Zeroizing;

/// PEM as Go's `pem.EncodeToMemory` writes it: 64-column base64 lines, LF, final newline.
pub(super) fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = Zeroizing::new(STANDARD.encode(der));
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str(&format!("-----BEGIN {label}-----\n"));
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The DER inside the first PEM block of `text`, which must carry `label`.
pub(super) fn pem_contents(text: &str, label: &str) -> Result<Vec<u8>, String> {
    let block = pem::parse(text).map_err(|_| "no PEM block found".to_string())?;
    if block.tag() != label {
        return Err(format!(
            "expected a {label} PEM block, found {:?}",
            block.tag()
        ));
    }
    Ok(block.contents().to_vec())
}
