//! The Markdown report: parameters, machine facts, one table, target checks, problems; the
//! rows and findings every scenario adds (memory and CPU), and the file it is written to.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::memory::Usage;
use crate::stats::{fmt_kib, fmt_latency, fmt_ratio, Latencies};
use crate::sys::{machine_busy_secs, own_cpu_secs, MachineFacts};

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    pub bootplane: String,
    pub reference: String,
    pub ratio: String,
    pub notes: String,
}

impl Row {
    pub fn new(scenario: impl Into<String>, bootplane: impl Into<String>) -> Self {
        Self {
            scenario: scenario.into(),
            bootplane: bootplane.into(),
            reference: "—".into(),
            ratio: "—".into(),
            notes: String::new(),
        }
    }

    pub fn reference(mut self, reference: impl Into<String>, ratio: impl Into<String>) -> Self {
        self.reference = reference.into();
        self.ratio = ratio.into();
        self
    }

    pub fn notes(mut self, notes: impl Into<String>) -> Self {
        self.notes = notes.into();
        self
    }
}

/// Whether a target was met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    NotMeasured,
}

impl Verdict {
    pub fn from_check(value: Option<bool>) -> Self {
        match value {
            Some(true) => Verdict::Met,
            Some(false) => Verdict::Missed,
            None => Verdict::NotMeasured,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "**missed**",
            Verdict::NotMeasured => "not measured",
        }
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub title: String,
    pub parameters: Vec<(String, String)>,
    pub rows: Vec<Row>,
    pub targets: Vec<(String, Verdict, String)>,
    pub findings: Vec<String>,
    pub problems: Vec<String>,
}

impl Report {
    pub fn row(&mut self, row: Row) {
        self.rows.push(row);
    }

    pub fn target(&mut self, name: impl Into<String>, verdict: Verdict, detail: impl Into<String>) {
        self.targets.push((name.into(), verdict, detail.into()));
    }

    /// Something the reader should know about the run (not a failure of the bench).
    pub fn finding(&mut self, text: impl Into<String>) {
        self.findings.push(text.into());
    }

    /// A failed check that makes a smoke run fail.
    pub fn problem(&mut self, text: impl Into<String>) {
        self.problems.push(text.into());
    }

    pub fn render(&self, facts: &MachineFacts) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# {}\n", self.title);
        let _ = writeln!(
            out,
            "Machine: {} CPUs ({}), {} RAM, Linux {}; bootplane {}; {}.\n",
            facts.cpus, facts.cpu_model, facts.mem_total, facts.kernel, facts.git_rev, facts.nginx
        );
        let params: Vec<String> = self
            .parameters
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(out, "Parameters: {}.\n", params.join(", "));
        let _ = writeln!(out, "| Scenario | bootplane | reference | ratio | notes |");
        let _ = writeln!(out, "|---|---:|---:|---:|---|");
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                cell(&r.scenario),
                cell(&r.bootplane),
                cell(&r.reference),
                cell(&r.ratio),
                cell(&r.notes)
            );
        }
        if !self.targets.is_empty() {
            let _ = writeln!(out, "\nTargets:\n");
            for (name, verdict, detail) in &self.targets {
                let _ = writeln!(out, "- {name}: {} ({detail})", verdict.label());
            }
        }
        if !self.findings.is_empty() {
            let _ = writeln!(out, "\nNotes:\n");
            for f in &self.findings {
                let _ = writeln!(out, "- {f}");
            }
        }
        if !self.problems.is_empty() {
            let _ = writeln!(out, "\nProblems:\n");
            for p in &self.problems {
                let _ = writeln!(out, "- {p}");
            }
        }
        out
    }
}

/// A table cell: pipes escaped, line breaks flattened.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// Above this share of the machine's CPU used by other processes, the report calls the run noisy.
const OTHER_WORK_NOISY: f64 = 0.10;
/// Idle RSS target.
const RSS_IDLE_TARGET_KIB: u64 = 30 * 1024;
/// Peak RSS target, every scenario.
const RSS_PEAK_TARGET_KIB: u64 = 64 * 1024;

/// A row with bootplane's memory and CPU in one scenario beside the reference's.
pub fn usage_rows(
    report: &mut Report,
    scenario: &str,
    ours: Usage,
    reference: Option<(&str, Usage)>,
) {
    let text = |u: &Usage| {
        format!(
            "{} / {}, {:.2} CPU s",
            fmt_kib(Some(u.idle_kib)),
            fmt_kib(Some(u.peak_kib)),
            u.cpu_secs
        )
    };
    let mut row = Row::new(
        format!("{scenario}: server RSS idle / peak, CPU seconds"),
        text(&ours),
    )
    .notes("RSS summed over the server's processes, sampled every 20 ms; ratio of peaks");
    if let Some((name, theirs)) = reference {
        row = row.reference(
            format!("{name} {}", text(&theirs)),
            fmt_ratio(Some(ours.peak_kib as f64), Some(theirs.peak_kib as f64)),
        );
    }
    report.row(row);
}

/// A row of latency p50 / p99, ours beside the reference's, with the ratio as speed (their
/// p99 over ours); and our p99.
pub fn latency_row(
    scenario: String,
    ours: &mut Latencies,
    theirs: &mut Latencies,
) -> (Row, Option<Duration>) {
    let p99 = ours.percentile(99.0);
    let row = Row::new(
        scenario,
        format!(
            "{} / {}",
            fmt_latency(ours.percentile(50.0)),
            fmt_latency(p99)
        ),
    )
    .reference(
        format!(
            "{} / {}",
            fmt_latency(theirs.percentile(50.0)),
            fmt_latency(theirs.percentile(99.0))
        ),
        fmt_ratio(
            theirs.percentile(99.0).map(|d| d.as_secs_f64()),
            p99.map(|d| d.as_secs_f64()),
        ),
    );
    (row, p99)
}

/// The memory targets over every appliance instance of the run: idle, and the peak of every
/// scenario.
pub fn memory_targets(report: &mut Report, usage: &[(&'static str, Usage)]) {
    let peak = usage.iter().max_by_key(|(_, u)| u.peak_kib);
    report.target(
        "RSS under 64 MB during every scenario",
        Verdict::from_check(peak.map(|(_, u)| u.peak_kib < RSS_PEAK_TARGET_KIB)),
        format!(
            "highest peak {} ({})",
            fmt_kib(peak.map(|(_, u)| u.peak_kib)),
            peak.map_or("", |(s, _)| *s)
        ),
    );
    // Entries without an idle reading (several short-lived instances) count for the peak only.
    let idle = usage
        .iter()
        .map(|(_, u)| u.idle_kib)
        .filter(|&k| k > 0)
        .max();
    let which = usage
        .iter()
        .max_by_key(|(_, u)| u.idle_kib)
        .map_or("", |(s, _)| *s);
    report.target(
        "RSS under 30 MB idle",
        Verdict::from_check(idle.map(|i| i < RSS_IDLE_TARGET_KIB)),
        format!(
            "highest idle RSS of the run's appliances {} ({which})",
            fmt_kib(idle)
        ),
    );
}

/// Who used the machine's CPU during the run, so the reader knows whether other work (on two
/// cores, a compiler) moved the numbers.
pub struct CpuAccount {
    start: Instant,
    machine_busy: Option<f64>,
    bench: f64,
}

impl CpuAccount {
    pub fn start() -> Self {
        Self {
            start: Instant::now(),
            machine_busy: machine_busy_secs(),
            bench: own_cpu_secs(),
        }
    }

    pub fn note(&self, report: &mut Report, facts: &MachineFacts, load_before: Option<f64>) {
        let wall = self.start.elapsed().as_secs_f64();
        let available = wall * facts.cpus as f64;
        let load = load_before.map_or("?".into(), |l| format!("{l:.2}"));
        let Some(busy) = machine_busy_secs()
            .zip(self.machine_busy)
            .map(|(b, a)| b - a)
        else {
            report.finding(format!("1-minute load average before the run: {load}"));
            return;
        };
        // The servers were this process's children and have been reaped: their CPU is in ours.
        let ours = own_cpu_secs() - self.bench;
        let other = (busy - ours).max(0.0);
        let share = if available > 0.0 {
            other / available
        } else {
            0.0
        };
        let text = format!(
            "CPU during the {wall:.0} s run: the bench with every server it ran {ours:.1} s, other processes {other:.1} s ({:.0}% of the machine); 1-minute load average before the run {load}",
            share * 100.0
        );
        report.finding(if share > OTHER_WORK_NOISY {
            format!("{text}. Other work shared this machine: treat the numbers as noisy and rerun on a quiet machine")
        } else {
            text
        });
    }
}

pub fn write_report(out: &Path, text: &str) -> Result<()> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_cannot_break_the_table() {
        assert_eq!(cell("a|b\nc"), "a\\|b c");
    }
}
