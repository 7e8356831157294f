//! The link itself: raw TCP throughput over the veth pair from this bench's own blaster (in the
//! server namespace) to plain reads (no verification), the bound the boot storm is held to and
//! the HTTP load generator's ceiling.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::netns::SERVER_IP;
use crate::report::Row;
use crate::servers::Reference;
use crate::Ctx;

const BLAST_PORT: u16 = 9000;
const CHUNK: usize = 1 << 20;
const STREAMS: usize = 4;

/// Serves blasts until killed: each connection sends an 8-byte length and gets that many bytes.
pub fn responder() -> Result<()> {
    let listener = TcpListener::bind((SERVER_IP, BLAST_PORT)).context("binding the blaster")?;
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        std::thread::spawn(move || {
            let mut len = [0u8; 8];
            if conn.read_exact(&mut len).is_err() {
                return;
            }
            let mut left = u64::from_be_bytes(len) as usize;
            let chunk = vec![0u8; CHUNK];
            while left > 0 {
                let n = left.min(CHUNK);
                if conn.write_all(&chunk[..n]).is_err() {
                    return;
                }
                left -= n;
            }
        });
    }
    Ok(())
}

async fn stream(bytes: u64) -> Result<u64> {
    let mut conn = TcpStream::connect(SocketAddr::from((SERVER_IP, BLAST_PORT))).await?;
    conn.write_all(&bytes.to_be_bytes()).await?;
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Ok(got);
        }
        got += n as u64;
    }
}

async fn blast(streams: usize, bytes: u64) -> Result<f64> {
    let start = Instant::now();
    let tasks: Vec<_> = (0..streams).map(|_| tokio::spawn(stream(bytes))).collect();
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / 1e6 / start.elapsed().as_secs_f64())
}

/// Measures the link and returns its best rate, MB/s.
pub async fn run(ctx: &mut Ctx) -> Result<f64> {
    eprintln!("link: raw TCP over the veth");
    let responder = Reference::responder(&ctx.names, &ctx.scratch, "tcp").await?;
    let bytes = ctx.params.blast_bytes;
    // Warm up (connection set-up, page cache of nothing: it is all memory).
    let _ = tokio::time::timeout(Duration::from_secs(5), blast(1, bytes / 10)).await;
    let one = blast(1, bytes).await?;
    let many = blast(STREAMS, bytes / STREAMS as u64).await?;
    responder.stop();
    let best = one.max(many);
    ctx.report.row(
        Row::new(
            "veth link, raw TCP (the load generator's ceiling for HTTP)",
            format!("{one:.0} MB/s one stream, {many:.0} MB/s {STREAMS} streams"),
        )
        .notes(format!(
            "this bench's blaster in the server namespace to plain reads, no verification, {} MB in all per measurement; the boot storm's bound uses the better one",
            bytes / 1_000_000
        )),
    );
    Ok(best)
}
