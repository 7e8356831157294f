//! Resident memory over time: a sampler reading the appliance's VmRSS every few milliseconds,
//! so each scenario's peak can be told apart (VmHWM alone only gives the peak of the whole run).

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
                        if let Ok(s) = ProcSample::read(pid) {
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

impl RssSampler {
    /// The samples as CSV: milliseconds since `origin`, RSS KiB, threads.
    pub fn csv(&self, origin: Instant) -> String {
        let v = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::from("ms,rss_kib,threads\n");
        for (t, s) in v.iter() {
            let ms = t.saturating_duration_since(origin).as_millis();
            out.push_str(&format!("{ms},{},{}\n", s.rss_kib, s.threads));
        }
        out
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

/// A named stretch of the run, for per-scenario memory peaks.
#[derive(Debug, Clone)]
pub struct Phase {
    pub name: String,
    pub start: Instant,
    pub end: Instant,
}
