//! Scenario: per-machine iPXE scripts (`/machine.ipxe?mac=…` for assigned machines) over
//! persistent connections, from bootplane (rendered per request) and from nginx serving the
//! very same bytes as static files.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::http_client::{get_small, KeepAlive};
use crate::report::{latency_row, Row, Verdict};
use crate::servers::http_addr;
use crate::stats::{fmt_count, fmt_latency, fmt_ratio, Latencies};
use crate::sys::own_cpu_secs;
use crate::Ctx;

const P99_TARGET: Duration = Duration::from_millis(5);

/// The path of a machine's script on bootplane and on nginx.
fn paths(mac: &str) -> (String, String) {
    (
        format!("/machine.ipxe?mac={mac}"),
        format!("/machine/{}.ipxe", mac.replace(':', "-")),
    )
}

/// What a run of the load gave.
#[derive(Debug, Default)]
struct ScriptLoad {
    requests: usize,
    failures: Vec<String>,
    latency: Latencies,
    wall: Duration,
    client_cpu_secs: f64,
}

impl ScriptLoad {
    fn per_sec(&self) -> Option<f64> {
        let secs = self.wall.as_secs_f64();
        (self.requests > 0 && secs > 0.0).then(|| self.requests as f64 / secs)
    }
}

pub async fn run(
    ctx: &mut Ctx,
    machines: &[(String, Ipv4Addr)],
    www: &Path,
    nginx: SocketAddr,
) -> Result<()> {
    eprintln!("HTTP scripts: rendering each machine's script once for nginx");
    let mut scripts = Vec::with_capacity(machines.len());
    for (mac, _) in machines {
        let (ours, theirs) = paths(mac);
        let (status, body) = get_small(http_addr(), &ours).await?;
        if status != 200 || !String::from_utf8_lossy(&body).contains("\nkernel ") {
            bail!(
                "GET {ours} answered {status}, not an install script: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let file = www.join(theirs.trim_start_matches('/'));
        std::fs::write(&file, &body).with_context(|| format!("writing {}", file.display()))?;
        scripts.push((ours, theirs, body.len()));
    }
    let scripts = Arc::new(scripts);
    let conns = ctx.params.script_connections;
    let duration = ctx.params.script_duration;
    eprintln!("HTTP scripts: bootplane, {conns} connections for {duration:?}");
    let ours = load(http_addr(), scripts.clone(), conns, duration, true).await;
    eprintln!("HTTP scripts: nginx");
    let theirs = load(nginx, scripts.clone(), conns, duration, false).await;

    let label = format!(
        "HTTP per-machine iPXE script ({} assigned machines), {conns} keep-alive connections",
        fmt_count(machines.len() as f64)
    );
    let rate = |l: &ScriptLoad| {
        l.per_sec()
            .map_or("n/a".into(), |v| format!("{}/s", fmt_count(v)))
    };
    let report = &mut ctx.report;
    report.row(
        Row::new(format!("{label}: requests/s"), rate(&ours))
            .reference(format!("nginx {}", rate(&theirs)), fmt_ratio(ours.per_sec(), theirs.per_sec()))
            .notes(format!(
                "bootplane renders a machine's script when it changed (or every 60 s at most) and sends it from its cache otherwise, logging each machine's requests once a second; nginx sends the same bytes from static files (so it is close to a trivial responder); {} and {} requests, client CPU {:.2} s and {:.2} s",
                fmt_count(ours.requests as f64),
                fmt_count(theirs.requests as f64),
                ours.client_cpu_secs,
                theirs.client_cpu_secs,
            )),
    );
    let (mut a, mut b) = (ours.latency.clone(), theirs.latency.clone());
    let (row, p99) = latency_row(format!("{label}: latency p50 / p99"), &mut a, &mut b);
    report.row(row.notes("ratio as speed (nginx p99 / bootplane p99)"));
    let ratio = match (ours.per_sec(), theirs.per_sec()) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    report.target(
        "per-machine scripts at least 0.5× nginx serving them statically",
        Verdict::from_check(ratio.map(|r| r >= 0.5)),
        fmt_ratio(ours.per_sec(), theirs.per_sec()),
    );
    report.target(
        "per-machine scripts p99 under 5 ms",
        Verdict::from_check(p99.map(|p| p < P99_TARGET)),
        format!("p99 {}", fmt_latency(p99)),
    );
    for (who, l) in [("bootplane", &ours), ("nginx", &theirs)] {
        if let Some(first) = l.failures.first() {
            report.problem(format!(
                "HTTP scripts {who}: {} requests failed; first: {first}",
                l.failures.len()
            ));
        }
    }
    Ok(())
}

/// `conns` persistent connections, each asking for the next machine's script until
/// `duration` is over; every answer is checked (status, length, the MAC in bootplane's).
async fn load(
    addr: SocketAddr,
    scripts: Arc<Vec<(String, String, usize)>>,
    conns: usize,
    duration: Duration,
    ours: bool,
) -> ScriptLoad {
    let start = Instant::now();
    let cpu = own_cpu_secs();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(conns);
    for c in 0..conns {
        let scripts = scripts.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = ScriptLoad::default();
            let mut conn = match KeepAlive::connect(addr).await {
                Ok(conn) => conn,
                Err(e) => {
                    out.failures.push(format!("{e:#}"));
                    return out;
                }
            };
            let mut i = c;
            while Instant::now() < deadline {
                let (ours_path, theirs_path, len) = &scripts[i % scripts.len()];
                i += conns;
                let path = if ours { ours_path } else { theirs_path };
                let sent = Instant::now();
                match conn.get(path).await {
                    Ok((200, body)) if body.len() == *len => {
                        out.latency.push(sent.elapsed());
                        out.requests += 1;
                    }
                    Ok((status, body)) => out.failures.push(format!(
                        "GET {path}: status {status}, {} bytes (expected {len})",
                        body.len()
                    )),
                    Err(e) => {
                        out.failures.push(format!("GET {path}: {e:#}"));
                        return out;
                    }
                }
            }
            out
        }));
    }
    let mut total = ScriptLoad::default();
    for task in tasks {
        match task.await {
            Ok(l) => {
                total.requests += l.requests;
                total.failures.extend(l.failures);
                total.latency.extend(l.latency);
            }
            Err(e) => total.failures.push(format!("connection task failed: {e}")),
        }
    }
    total.wall = start.elapsed();
    total.client_cpu_secs = own_cpu_secs() - cpu;
    total
}
