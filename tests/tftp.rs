//! TFTP against a running appliance, with tftp-hpa, curl and atftp as clients.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use bootplane::model::{EventKind, Mac};
use common::{run_client, s, Appliance};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_hpa_downloads_undionly_byte_for_byte() {
    let app = Appliance::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = app.tftp.port().to_string();
    let (ok, _, err) = run_client(
        "tftp",
        s(&[
            "-m",
            "binary",
            "127.0.0.1",
            &port,
            "-c",
            "get",
            "undionly.kpxe",
        ]),
        Some(dir.path().to_path_buf()),
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read(dir.path().join("undionly.kpxe")).unwrap(),
        std::fs::read(app.ipxe.path().join("undionly.kpxe")).unwrap()
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_negotiates_blksize_and_tsize() {
    let app = Appliance::start().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ipxe.efi");
    let url = format!("tftp://{}/ipxe.efi", app.tftp);
    let (ok, _, err) = run_client(
        "curl",
        s(&[
            "-sS",
            "-v",
            "--tftp-blksize",
            "1468",
            "-o",
            out.to_str().unwrap(),
            &url,
        ]),
        None,
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(app.ipxe.path().join("ipxe.efi")).unwrap()
    );
    // curl reports the size the server announced in its OACK.
    assert!(err.contains("1000000"), "tsize not announced: {err}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atftp_with_windowsize_and_mac_prefix_records_the_transfer() {
    let app = Appliance::start().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("snponly.efi");
    let port = app.tftp.port().to_string();
    let (ok, _, err) = run_client(
        "atftp",
        s(&[
            "--option",
            "windowsize 8",
            "--option",
            "blksize 1468",
            "--option",
            "tsize 0",
            "--trace",
            "-g",
            "-r",
            "52-54-00-aa-bb-cc/snponly.efi",
            "-l",
            out.to_str().unwrap(),
            "127.0.0.1",
            &port,
        ]),
        None,
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(app.ipxe.path().join("snponly.efi")).unwrap()
    );
    let mac: Mac = "52:54:00:aa:bb:cc".parse().unwrap();
    let events = app.wait_event(mac, EventKind::TftpServed).await;
    assert!(
        events.iter().any(|e| e.detail.starts_with("snponly.efi")),
        "{events:#?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escapes_missing_files_and_autoexec_fail_at_once() {
    let app = Appliance::start().await;
    std::fs::write(app.ipxe.path().join("autoexec.ipxe"), b"#!ipxe\n").unwrap();
    let secret = app.ipxe.path().parent().unwrap().join("secret.txt");
    std::fs::write(&secret, b"secret").unwrap();
    for name in [
        "../secret.txt",
        "/../secret.txt",
        "nope.efi",
        "autoexec.ipxe",
        "sub/../../secret.txt",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let url = format!("tftp://{}/{}", app.tftp, name);
        let started = Instant::now();
        let (ok, _, err) = run_client(
            "curl",
            s(&["-sS", "--path-as-is", "-o", out.to_str().unwrap(), &url]),
            None,
        )
        .await;
        assert!(!ok, "{name} must not be served");
        // curl exit 68 is CURLE_TFTP_NOTFOUND: the server answered "file not found".
        assert!(err.contains("(68)"), "{name}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{name} took {:?}",
            started.elapsed()
        );
        assert!(!out.exists() || std::fs::read(&out).unwrap().is_empty());
    }
    let _ = std::fs::remove_file(secret);
    app.stop().await;
}
