//! The cluster page's boot timeline: one row per machine of the cluster with its current boot's
//! steps as a time bar, a download in flight, what it waits for, and a flag with the likely
//! causes when it has waited longer than its step should take. Its rows are a live fragment
//! (`/ui/cluster/timeline`) the page's script refreshes.

use askama::Template;
use axum::extract::State;
use axum::response::Response;

use super::ops_error_page;
use crate::model::timeline::{self, BootTimeline, Live, Phase};
use crate::model::{Lifecycle, Machine, Role};
use crate::ops::OpsError;
use crate::state::AppState;

/// Newest events read per machine to find its current boot.
const EVENTS_PER_MACHINE: i64 = 100;
/// Machines without a role shown at most (the most recently seen, within the hour): anything
/// on the LAN that network-boots becomes one, so they must not crowd out the cluster.
const UNASSIGNED_SHOWN: usize = 20;
const UNASSIGNED_RECENT_MS: i64 = 3_600_000;

/// One step of a row's bar.
#[derive(Clone, Debug)]
pub struct Segment {
    pub phase: &'static str,
    pub label: &'static str,
    /// Relative width: the milliseconds spent at this step (unreached steps: 0).
    pub grow: i64,
    pub reached: bool,
    /// The step the machine is at now (its bar runs on to the present).
    pub current: bool,
    pub title: String,
}

#[derive(Clone, Debug)]
pub struct TimelineRow {
    pub mac: String,
    pub name: String,
    pub role: String,
    pub segments: Vec<Segment>,
    /// Since the boot's first step, e.g. "3 min".
    pub elapsed: String,
    pub wait: String,
    pub stuck: Option<StuckView>,
    /// A download in flight: percent done and "23.1 of 80.0 MB".
    pub transfer: Option<(u64, String)>,
}

#[derive(Clone, Debug)]
pub struct StuckView {
    pub headline: String,
    pub causes: Vec<String>,
}

#[derive(Template)]
#[template(path = "ui/_timeline_rows.html")]
pub struct TimelineRows {
    pub status: String,
    pub rows: Vec<TimelineRow>,
}

/// A machine with its current boot, as the cluster page and its status line read it.
pub struct Booting {
    pub machine: Machine,
    pub timeline: BootTimeline,
}

/// The cluster's machines among `all` (control planes, then workers, then unassigned; by name)
/// with their current boots.
async fn boots(state: &AppState, cluster: &str, all: &[Machine]) -> Result<Vec<Booting>, OpsError> {
    let now = state.recorder.now_ms();
    let (mut machines, mut unassigned): (Vec<Machine>, Vec<Machine>) = all
        .iter()
        .filter(|m| m.cluster == cluster)
        .cloned()
        .partition(|m| m.role != Role::Unassigned);
    unassigned.retain(|m| {
        m.last_seen
            .is_some_and(|at| now - at < UNASSIGNED_RECENT_MS)
    });
    unassigned.sort_by_key(|m| std::cmp::Reverse(m.last_seen));
    machines.extend(unassigned.into_iter().take(UNASSIGNED_SHOWN));
    let order = |r: Role| match r {
        Role::Controlplane => 0,
        Role::Worker => 1,
        Role::Unassigned => 2,
    };
    machines.sort_by(|a, b| {
        (order(a.role), a.hostname.as_deref().unwrap_or("~"), a.mac).cmp(&(
            order(b.role),
            b.hostname.as_deref().unwrap_or("~"),
            b.mac,
        ))
    });
    let mut out = Vec::with_capacity(machines.len());
    for machine in machines {
        let events = state.db.events(machine.mac, EVENTS_PER_MACHINE).await?;
        let timeline = timeline::timeline(&machine, &events, &live_of(state, &machine), now);
        out.push(Booting { machine, timeline });
    }
    Ok(out)
}

/// What the timeline of `machine` reads besides its events: its download in flight, its
/// running probe, the step-limit scale and the retry interval.
pub fn live_of(state: &AppState, machine: &Machine) -> Live {
    Live {
        transfer: state.transfers.get(machine.mac),
        probe: state.orchestrator.probe_view(machine.mac),
        ms_per_limit_second: state.config.ui.step_limit_ms_per_second,
        retry_secs: state.config.boot.retry_secs,
    }
}

fn name(m: &Machine) -> String {
    m.hostname.clone().unwrap_or_else(|| m.mac.to_string())
}

/// "cp-1", "cp-1 and cp-2", "cp-1, cp-2 and cp-3".
fn and_list(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// What the cluster waits for before its bootstrap, naming the control planes and why each is
/// not ready; empty once bootstrapped.
pub fn cluster_wait(boots: &[Booting], needed: usize, bootstrapped: bool) -> String {
    if bootstrapped {
        return String::new();
    }
    let cps: Vec<&Booting> = boots
        .iter()
        .filter(|b| b.machine.role == Role::Controlplane)
        .collect();
    let ready = cps
        .iter()
        .filter(|b| b.machine.state == Lifecycle::Ready)
        .count();
    let waiting: Vec<&&Booting> = cps
        .iter()
        .filter(|b| b.machine.state != Lifecycle::Ready)
        .collect();
    let mut text = if waiting.is_empty() && cps.len() >= needed {
        format!("all {} control planes ready: bootstrapping", cps.len())
    } else if waiting.is_empty() {
        String::new()
    } else {
        let names: Vec<String> = waiting.iter().map(|b| name(&b.machine)).collect();
        format!(
            "waiting for {} ({ready} of {needed} control planes ready)",
            and_list(&names)
        )
    };
    if cps.len() < needed {
        let missing = needed - cps.len();
        if !text.is_empty() {
            text += "; ";
        }
        text += &format!(
            "{missing} more control plane{} to assign (Machines page)",
            if missing == 1 { "" } else { "s" }
        );
    }
    for b in waiting {
        text += &format!("\n{}: {}", name(&b.machine), b.timeline.wait);
    }
    text
}

fn row(b: &Booting, now: i64) -> TimelineRow {
    let t = &b.timeline;
    let last = t.marks.len().checked_sub(1);
    let running = !t.settled;
    let segments = Phase::ALL
        .iter()
        .map(|&phase| {
            let at = t.marks.iter().position(|m| m.phase == phase);
            match at {
                Some(i) => {
                    let start = t.marks[i].at;
                    let current = Some(i) == last && running;
                    let end = match t.marks.get(i + 1) {
                        Some(next) => next.at,
                        None if current => now,
                        None => start,
                    };
                    let spent = (end - start).max(0);
                    Segment {
                        phase: phase_class(phase),
                        label: phase.label(),
                        grow: spent,
                        reached: true,
                        current,
                        title: format!(
                            "{} at {} ({} there)",
                            phase.label(),
                            crate::support::time::format_time(Some(start)),
                            timeline::span(spent)
                        ),
                    }
                }
                None => Segment {
                    phase: phase_class(phase),
                    label: phase.label(),
                    grow: 0,
                    reached: false,
                    current: false,
                    title: format!("{}: not reached in this boot", phase.label()),
                },
            }
        })
        .collect();
    let elapsed = match (t.marks.first(), t.marks.last()) {
        (Some(first), Some(last)) => {
            let end = if running { now } else { last.at };
            timeline::span(end - first.at)
        }
        _ => String::new(),
    };
    TimelineRow {
        mac: b.machine.mac.to_string(),
        name: name(&b.machine),
        role: b.machine.role.to_string(),
        segments,
        elapsed,
        wait: t.wait.clone(),
        stuck: t.stuck.as_ref().map(|s| StuckView {
            headline: format!(
                "stuck after {} for {}",
                s.after.label(),
                timeline::span(s.for_ms)
            ),
            causes: s.causes.clone(),
        }),
        transfer: t.transfer.as_ref().map(|x| {
            (
                x.sent.saturating_mul(100) / x.total.max(1),
                format!(
                    "{} {:.1} of {:.1} MB",
                    x.asset,
                    x.sent as f64 / 1e6,
                    x.total as f64 / 1e6
                ),
            )
        }),
    }
}

fn phase_class(phase: Phase) -> &'static str {
    match phase {
        Phase::Dhcp => "dhcp",
        Phase::Ipxe => "ipxe",
        Phase::Script => "script",
        Phase::Kernel => "kernel",
        Phase::Initramfs => "initramfs",
        Phase::Config => "config",
        Phase::Talos => "talos",
        Phase::Ready => "ready",
    }
}

/// The timeline's rows for `cluster`, and its status line, from the inventory `machines`.
pub async fn rows(
    state: &AppState,
    cluster: &crate::model::Cluster,
    machines: &[Machine],
) -> Result<TimelineRows, OpsError> {
    let boots = boots(state, &cluster.name, machines).await?;
    let needed = if cluster.single_controlplane { 1 } else { 3 };
    let now = state.recorder.now_ms();
    Ok(TimelineRows {
        status: cluster_wait(&boots, needed, cluster.bootstrapped_at.is_some()),
        rows: boots.iter().map(|b| row(b, now)).collect(),
    })
}

/// `GET /ui/cluster/timeline`: the rows, for the page's live refresh.
pub async fn ui_cluster_timeline_get(State(state): State<AppState>) -> Response {
    let cluster = match state.db.get_cluster(None).await {
        Ok(Some(c)) => c,
        Ok(None) => return ops_error_page(&OpsError::Refused("no cluster is defined".into())),
        Err(e) => return ops_error_page(&OpsError::Db(e)),
    };
    // The in-memory snapshot, as the machines list's refresh reads it: a poll costs no machine
    // query.
    let machines: Vec<Machine> = state
        .inventory
        .snapshot()
        .by_mac
        .values()
        .cloned()
        .collect();
    match rows(&state, &cluster, &machines).await {
        Ok(rows) => super::render_rows(&rows, ""),
        Err(e) => ops_error_page(&e),
    }
}
