//! TFTP against a running appliance, with tftp-hpa, curl and atftp as clients.

use std::time::{Duration, Instant};

use crate::kit::{run_client, s, Appliance};
use bootplane::model::{EventKind, Mac};

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

fn rrq(name: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut p = vec![0, 1];
    for field in [name, "octet"]
        .into_iter()
        .chain(options.iter().flat_map(|(k, v)| [*k, *v]))
    {
        p.extend_from_slice(field.as_bytes());
        p.push(0);
    }
    p
}

/// A plain RFC 1350 client (512-byte blocks, no options) from `local`: asks up to five times,
/// a second apart, and returns the file, or `None` if no transfer started.
async fn fetch(local: &str, server: std::net::SocketAddr, name: &str) -> Option<Vec<u8>> {
    use tokio::time::timeout;
    let sock = tokio::net::UdpSocket::bind(local).await.unwrap();
    let mut buf = [0u8; 600];
    let mut first = None;
    for _ in 0..5 {
        sock.send_to(&rrq(name, &[]), server).await.unwrap();
        if let Ok(Ok(got)) = timeout(Duration::from_secs(1), sock.recv_from(&mut buf)).await {
            first = Some(got);
            break;
        }
    }
    let (mut n, from) = first?;
    let mut data = Vec::new();
    let mut expected: u16 = 1;
    loop {
        if buf[..2] != [0, 3] {
            return None;
        }
        let block = u16::from_be_bytes([buf[2], buf[3]]);
        if block == expected {
            data.extend_from_slice(&buf[4..n]);
            expected = expected.wrapping_add(1);
        }
        sock.send_to(&[0, 4, buf[2], buf[3]], from).await.unwrap();
        if block == expected.wrapping_sub(1) && n < 4 + 512 {
            return Some(data);
        }
        let (m, _) = timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        n = m;
    }
}

/// One address opens more transfers than the server has slots, asks for the longest timeout
/// and never acknowledges: another address still gets its file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holding_silent_transfers_cannot_starve_another() {
    let app = Appliance::start().await;
    // The greedy host opens transfers 32 at a time, each asking for the longest timeout, and
    // reads their OACKs but never acknowledges; it stops when a burst gets no answer at all
    // (the server has nothing more to give it).
    let request = rrq("ipxe.efi", &[("timeout", "255"), ("blksize", "1468")]);
    let mut greedy = Vec::new();
    let mut held = 0;
    let mut buf = [0u8; 600];
    while greedy.len() < bootplane::tftp::MAX_TRANSFERS + 64 {
        let mut burst = Vec::new();
        for _ in 0..32 {
            let sock = tokio::net::UdpSocket::bind("127.0.0.2:0").await.unwrap();
            sock.send_to(&request, app.tftp).await.unwrap();
            burst.push(sock);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        let mut answered = 0;
        for sock in &burst {
            if let Ok(Ok(_)) = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                answered += 1;
            }
        }
        greedy.extend(burst);
        held += answered;
        if answered == 0 {
            break;
        }
    }
    assert!(held >= bootplane::tftp::MAX_TRANSFERS_PER_ADDRESS, "{held}");
    let got = fetch("127.0.0.3:0", app.tftp, "undionly.kpxe").await;
    let expected = std::fs::read(app.ipxe.path().join("undionly.kpxe")).unwrap();
    assert!(
        got.as_deref() == Some(&expected[..]),
        "the second address got no transfer (or a wrong file), the first holds {held}"
    );
    drop(greedy);
    app.stop().await;
}

/// A symbolic link in the iPXE directory to a private file outside it (mode 0600, like the
/// database) is served neither over TFTP nor over `/ipxe/`; a link to a public system file
/// (Debian's `ipxe.efi -> /boot/ipxe.efi`) is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_out_of_the_ipxe_directory_is_not_served() {
    use std::os::unix::fs::PermissionsExt;
    let app = Appliance::start().await;
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.bin");
    std::fs::write(&secret, b"outside the ipxe directory").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&secret, app.ipxe.path().join("escape.efi")).unwrap();
    // Writable by others: not followed either.
    let shared = outside.path().join("shared.bin");
    std::fs::write(&shared, b"outside and writable by anyone").unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::os::unix::fs::symlink(&shared, app.ipxe.path().join("shared.efi")).unwrap();
    // A public file, as Debian's package links ipxe.efi to /boot.
    let public = outside.path().join("public.bin");
    std::fs::write(&public, b"a public system file").unwrap();
    std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::symlink(&public, app.ipxe.path().join("linked.efi")).unwrap();
    let response = reqwest::get(app.url("/ipxe/linked.efi")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        &response.bytes().await.unwrap()[..],
        b"a public system file"
    );
    let response = reqwest::get(app.url("/ipxe/shared.efi")).await.unwrap();
    assert_eq!(response.status(), 404);

    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&rrq("escape.efi", &[]), app.tftp)
        .await
        .unwrap();
    let mut buf = [0u8; 600];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("no answer")
        .unwrap();
    assert_eq!(&buf[..4], &[0, 5, 0, 1], "not a file-not-found error");
    assert!(!buf[..n].windows(7).any(|w| w == b"outside"));

    let response = reqwest::get(app.url("/ipxe/escape.efi")).await.unwrap();
    assert_eq!(response.status(), 404);
    // The directory's own files are still served.
    let response = reqwest::get(app.url("/ipxe/undionly.kpxe")).await.unwrap();
    assert_eq!(response.status(), 200);
    app.stop().await;
}
