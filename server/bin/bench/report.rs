//! The Markdown report: parameters, machine facts, one table, target checks, problems.

use std::fmt::Write as _;

use crate::sys::MachineFacts;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_cannot_break_the_table() {
        assert_eq!(cell("a|b\nc"), "a\\|b c");
    }
}
