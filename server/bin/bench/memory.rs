//! Resident memory over time: a sampler reading a server's VmRSS (summed over the process and
//! its children: nginx's workers, tftpd-hpa's per-transfer forks) every few milliseconds, so
//! each scenario's peak can be told apart, and the CPU seconds between two marks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sys::ProcSample;

/// How often the sampler reads /proc.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// A background thread sampling one process's RSS until dropped.
#[derive(Debug)]
pub struct RssSampler {
    samples: Arc<Mutex<Vec<(Instant, ProcSample)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(pid: u32) -> Self {
        let samples = Arc::new(Mutex::new(Vec::with_capacity(4096)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (samples, stop) = (samples.clone(), stop.clone());
            std::thread::Builder::new()
                .name("rss-sampler".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok(s) = ProcSample::read_tree(pid) {
                            let mut v = samples.lock().unwrap_or_else(|e| e.into_inner());
                            v.push((Instant::now(), s));
                        }
                        std::thread::sleep(SAMPLE_EVERY);
                    }
                })
                .ok()
        };
        Self {
            samples,
            stop,
            thread,
        }
    }

    /// Highest sampled RSS (KiB) and thread count between two instants.
    pub fn peak_between(&self, from: Instant, to: Instant) -> Option<(u64, u64)> {
        let v = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let within = || v.iter().filter(|(t, _)| *t >= from && *t <= to);
        let rss = within().map(|(_, s)| s.rss_kib).max()?;
        let threads = within().map(|(_, s)| s.threads).max()?;
        Some((rss, threads))
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One server's memory and CPU for a stretch of the run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// RSS (KiB) after start-up, before any load.
    pub idle_kib: u64,
    /// Highest sampled RSS (KiB) within the stretch.
    pub peak_kib: u64,
    /// CPU seconds (user + system, children included) within the stretch.
    pub cpu_secs: f64,
}

/// A point in a server's life to measure from.
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    at: Instant,
    cpu: f64,
}

/// Samples one server from its idle reading on.
#[derive(Debug)]
pub struct Meter {
    pid: u32,
    sampler: RssSampler,
    pub idle_kib: u64,
}

impl Meter {
    /// Waits `settle` for the server to go idle, reads its idle RSS and starts sampling.
    pub async fn start(pid: u32, settle: Duration) -> anyhow::Result<Self> {
        tokio::time::sleep(settle).await;
        let idle = ProcSample::read_tree(pid)?;
        Ok(Self {
            pid,
            sampler: RssSampler::start(pid),
            idle_kib: idle.rss_kib,
        })
    }

    pub fn mark(&self) -> Mark {
        Mark {
            at: Instant::now(),
            cpu: ProcSample::read_tree(self.pid).map_or(0.0, |s| s.cpu_secs),
        }
    }

    /// Peak RSS and CPU seconds from `since` to now.
    pub fn since(&self, since: Mark) -> Usage {
        let now = self.mark();
        let sampled = self
            .sampler
            .peak_between(since.at, now.at)
            .map_or(0, |p| p.0);
        let current = ProcSample::read_tree(self.pid).map_or(0, |s| s.rss_kib);
        Usage {
            idle_kib: self.idle_kib,
            peak_kib: sampled.max(current),
            cpu_secs: (now.cpu - since.cpu).max(0.0),
        }
    }
}
