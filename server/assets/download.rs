//! HTTP downloads into `.part` files: resumed with a Range from what is there, retried while
//! the failure is transient, hashed on the way.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use super::files::{hash_file, hash_prefix};
use super::progress::ProgressFn;
use super::{io, Digest, ImagesError};

/// Attempts per file before a download is given up (it resumes on the next `add`).
const DOWNLOAD_ATTEMPTS: u32 = 5;
const RETRY_PAUSE: Duration = Duration::from_millis(300);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// No byte for this long breaks the transfer (and the next attempt resumes it).
const READ_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) fn client() -> Result<reqwest::Client, ImagesError> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .user_agent(concat!("bootplane/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ImagesError::Client(e.to_string()))
}

/// Downloads `url` into `part`, resuming from what `part` already holds; retries transient
/// failures (each retry resumes).
pub(super) async fn download(
    url: &str,
    part: &Path,
    name: &str,
    progress: Option<ProgressFn>,
) -> Result<Digest, ImagesError> {
    let client = client()?;
    let mut attempt = 1;
    loop {
        match download_once(&client, url, part, name, progress.as_ref()).await {
            Ok(d) => return Ok(d),
            Err(e) if e.transient() && attempt < DOWNLOAD_ATTEMPTS => {
                let what = if matches!(e, ImagesError::Unreachable { .. }) {
                    "download not started: trying again"
                } else {
                    "download interrupted: resuming"
                };
                tracing::warn!(url, attempt, of = DOWNLOAD_ATTEMPTS, error = %e, "{what}");
                tokio::time::sleep(RETRY_PAUSE * attempt).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

pub(super) fn transfer(url: &str, e: impl std::fmt::Display) -> ImagesError {
    ImagesError::Download {
        url: url.into(),
        reason: e.to_string(),
    }
}

/// A reqwest error with its causes ("connection refused" is in the source chain, not the top).
pub(super) fn transfer_error(url: &str, e: reqwest::Error) -> ImagesError {
    let mut reason = String::new();
    let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    while let Some(c) = cause {
        if !reason.is_empty() {
            reason.push_str(": ");
        }
        reason.push_str(&c.to_string());
        cause = c.source();
    }
    if reason.is_empty() {
        reason = e.to_string();
    }
    transfer(url, reason)
}

/// A connection that never opened, said plainly: "no DNS answer for factory.talos.dev" rather
/// than a chain of client errors.
fn unreachable(url: &str, e: reqwest::Error) -> ImagesError {
    let host = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| url.to_string());
    let ImagesError::Download { reason, .. } = transfer_error(url, e) else {
        return ImagesError::Internal("unexpected error shape".into());
    };
    let said = match crate::support::net_error::plain(&reason) {
        Some("no DNS answer") => {
            "no DNS answer for it (does this host have a resolver and a route to the internet?)"
                .to_string()
        }
        Some(words) => words.to_string(),
        None => reason,
    };
    ImagesError::Unreachable { host, reason: said }
}

async fn download_once(
    client: &reqwest::Client,
    url: &str,
    part: &Path,
    name: &str,
    progress: Option<&ProgressFn>,
) -> Result<Digest, ImagesError> {
    let have = match tokio::fs::metadata(part).await {
        Ok(m) => m.len(),
        Err(_) => 0,
    };
    let mut request = client.get(url);
    if have > 0 {
        request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let response = request.send().await.map_err(|e| {
        if e.is_connect() {
            unreachable(url, e)
        } else {
            transfer_error(url, e)
        }
    })?;
    let status = response.status().as_u16();
    let resumed = match status {
        206 if have > 0 => {
            let range = response
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !range.starts_with(&format!("bytes {have}-")) {
                // Not the part asked for: start over.
                let _ = tokio::fs::remove_file(part).await;
                return Err(transfer(url, format!("unexpected content-range '{range}'")));
            }
            true
        }
        200 => false,
        416 if have > 0 => {
            let complete = response
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes */"))
                .and_then(|n| n.parse::<u64>().ok())
                == Some(have);
            if complete {
                // An earlier attempt got every byte: hash what is there.
                return hash_file(part.to_path_buf()).await;
            }
            // What is there may be too long (the file changed upstream): start over.
            let _ = tokio::fs::remove_file(part).await;
            return Err(transfer(url, "range not satisfiable; starting over"));
        }
        _ => {
            return Err(ImagesError::Status {
                url: url.into(),
                status,
            })
        }
    };
    let (mut hasher, mut done) = if resumed {
        let p = part.to_path_buf();
        tokio::task::spawn_blocking(move || hash_prefix(&p))
            .await
            .map_err(|e| ImagesError::Internal(e.to_string()))??
    } else {
        (Sha256::new(), 0)
    };
    if resumed {
        tracing::info!(url, from = done, "resuming download");
    }
    let total = response.content_length().map(|len| len + done);
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(part)
        .await
        .map_err(io("cannot open", part))?;
    let mut body = response.bytes_stream();
    let mut failure = None;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                failure = Some(transfer_error(url, e));
                break;
            }
        };
        file.write_all(&chunk)
            .await
            .map_err(io("cannot write", part))?;
        hasher.update(&chunk);
        done += chunk.len() as u64;
        if let Some(p) = progress {
            p(name, done, total);
        }
    }
    file.flush().await.map_err(io("cannot write", part))?;
    file.sync_all().await.map_err(io("cannot write", part))?;
    if let Some(e) = failure {
        return Err(e);
    }
    if let Some(total) = total {
        if done != total {
            return Err(transfer(
                url,
                format!("ended after {done} of {total} bytes"),
            ));
        }
    }
    Ok(Digest {
        size: done,
        sha256: hex::encode(hasher.finalize()),
    })
}
