//! The machine and its processes: temp dirs, free ports, /proc readings, machine facts.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

/// Linux reports utime/stime in USER_HZ ticks, which is 100 on every mainstream architecture.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// A directory removed (with its contents) when dropped.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    pub fn new(prefix: &str) -> Result<Self> {
        let base = std::env::temp_dir();
        for _ in 0..16 {
            let path = base.join(format!(
                "{prefix}-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ));
            match fs::create_dir(&path) {
                Ok(()) => return Ok(Self { path, keep: false }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("creating {}", path.display()));
                }
            }
        }
        anyhow::bail!(
            "cannot create a temporary directory under {}",
            base.display()
        )
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leave the directory in place when dropped, and say where it is.
    pub fn keep(&mut self, keep: bool) {
        self.keep = keep;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Memory and CPU of one process at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// Peak resident set size since start, KiB.
    pub hwm_kib: u64,
    /// User plus system CPU time, seconds.
    pub cpu_secs: f64,
    /// Threads in the process.
    pub threads: u64,
}

impl ProcSample {
    /// Reads /proc/<pid>/status and /proc/<pid>/stat.
    pub fn read(pid: u32) -> Result<Self> {
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let number = |key: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        Ok(Self {
            rss_kib: number("VmRSS:"),
            hwm_kib: number("VmHWM:"),
            threads: number("Threads:"),
            cpu_secs: cpu_secs(pid)?,
        })
    }

    /// The sum over a process and its direct children (nginx's master and workers).
    pub fn read_tree(pid: u32) -> Result<Self> {
        let mut total = Self::read(pid)?;
        for child in children(pid) {
            if let Ok(s) = Self::read(child) {
                total.rss_kib += s.rss_kib;
                total.hwm_kib += s.hwm_kib;
                total.cpu_secs += s.cpu_secs;
                total.threads += s.threads;
            }
        }
        Ok(total)
    }
}

/// utime + stime of a process, seconds.
fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_cpu_secs(&stat).with_context(|| format!("parsing /proc/{pid}/stat"))
}

/// Fields 14 to 17 of /proc/<pid>/stat (utime, stime, and those of reaped children: tftpd-hpa
/// forks per transfer), counted after the parenthesised command name (which may itself contain
/// spaces and parentheses).
fn parse_cpu_secs(stat: &str) -> Option<f64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // after_comm starts at field 3 (state); utime is field 14.
    let ticks: Vec<u64> = after_comm
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    Some(ticks.iter().sum::<u64>() as f64 / CLOCK_TICKS_PER_SEC)
}

/// CPU seconds used so far by this (the bench) process, all threads.
pub fn own_cpu_secs() -> f64 {
    cpu_secs(std::process::id()).unwrap_or(0.0)
}

/// CPU seconds used so far by the calling thread, from the scheduler's nanosecond account
/// (/proc/thread-self/schedstat; utime/stime ticks are too coarse for sub-second phases).
pub fn thread_cpu_secs() -> f64 {
    fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0.0, |ns| ns as f64 / 1e9)
}

/// CPU seconds the whole machine has spent busy (all CPUs; idle and iowait excluded).
pub fn machine_busy_secs() -> Option<f64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    parse_machine_busy(stat.lines().next()?)
}

/// The aggregate `cpu` line of /proc/stat: user nice system idle iowait irq softirq steal ...
fn parse_machine_busy(line: &str) -> Option<f64> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let ticks: Vec<u64> = fields
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let busy: u64 = ticks
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    Some(busy as f64 / CLOCK_TICKS_PER_SEC)
}

/// The 1-minute load average, to tell the reader whether other work shared the machine.
pub fn load_average() -> Option<f64> {
    fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Direct children of `pid`: what its threads' `children` files list (a few small reads, so
/// the sampler costs little), else found by scanning /proc for their parent id (kernels
/// without CONFIG_PROC_CHILDREN).
fn children(pid: u32) -> Vec<u32> {
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        let mut found = Vec::new();
        let mut listed = false;
        for task in tasks.flatten() {
            if let Ok(text) = fs::read_to_string(task.path().join("children")) {
                listed = true;
                found.extend(
                    text.split_whitespace()
                        .filter_map(|n| n.parse::<u32>().ok()),
                );
            }
        }
        if listed {
            return found;
        }
    }
    children_by_scan(pid)
}

/// Direct children of `pid`, found by scanning /proc for their parent id.
fn children_by_scan(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| {
            fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|s| {
                    let after = &s[s.rfind(')')? + 1..];
                    after.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// Facts about the machine the numbers were taken on.
#[derive(Debug, Clone)]
pub struct MachineFacts {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub mem_total: String,
    pub git_rev: String,
    pub nginx: String,
}

impl MachineFacts {
    pub fn gather() -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|rest| rest.split(':').nth(1))
                .map_or_else(|| "unknown".into(), |m| m.trim().to_string()),
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".into(), |k| k.trim().to_string()),
            mem_total: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
                .map_or_else(
                    || "unknown".into(),
                    |kib| format!("{:.1} GiB", kib as f64 / 1048576.0),
                ),
            git_rev: command_output(
                "git",
                &[
                    "-C",
                    env!("CARGO_MANIFEST_DIR"),
                    "describe",
                    "--always",
                    "--dirty",
                ],
            )
            .unwrap_or_else(|| "unknown".into()),
            nginx: [
                ("nginx", &["-v"][..]),
                ("dnsmasq", &["--version"][..]),
                ("in.tftpd", &["-V"][..]),
            ]
            .iter()
            .map(|(p, args)| {
                command_output(p, args).map_or_else(
                    || format!("{p} not found"),
                    |v| v.split(" Copyright").next().unwrap_or(&v).to_string(),
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        }
    }
}

/// First line of a command's stdout (or stderr, where `nginx -v` writes), if it ran.
fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    let line = String::from_utf8_lossy(&text)
        .lines()
        .next()?
        .trim()
        .to_string();
    Some(line)
}

/// Polls `ready` every 20 ms until it returns true or `limit` passes.
pub fn wait_until(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if ready() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_process_is_found_both_ways() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = std::process::id();
        let quick = children(me);
        let scanned = children_by_scan(me);
        let _ = child.kill();
        let _ = child.wait();
        assert!(quick.contains(&child.id()), "{quick:?}");
        assert!(scanned.contains(&child.id()), "{scanned:?}");
    }

    #[test]
    fn cpu_time_is_read_after_the_command_name() {
        let stat = "42 (we ird) name)) S 1 42 42 0 -1 4194560 100 0 0 0 250 40 6 4 20 0 1 0";
        assert_eq!(parse_cpu_secs(stat), Some(3.0));
    }

    #[test]
    fn machine_busy_time_leaves_out_idle_and_iowait() {
        let line = "cpu  100 20 30 5000 700 1 2 3 0 0";
        assert_eq!(parse_machine_busy(line), Some(1.56));
        assert_eq!(parse_machine_busy("cpu0 1 2 3 4 5 6 7 8"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let sample = ProcSample::read(std::process::id()).unwrap();
        assert!(sample.rss_kib > 0);
        assert!(sample.hwm_kib >= sample.rss_kib);
    }
}
