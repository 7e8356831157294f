//! A machine's lifecycle: the one table of what moves a machine from one state to the next,
//! and the decision what a network boot of an installed machine means.
//!
//! Every write of a machine's state goes through [`transition`] (the database applies it in the
//! transaction that records the step and its event), so a new way into a state is a new row
//! here, and a step the table does not allow is refused, never written.

use std::fmt;

use super::{Lifecycle, Mac, Role};

/// What happened to a machine that may move its lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// An operator added or edited the machine: its state follows its (new) role and whether
    /// its node has already shown it installed.
    Edited { role: Role },
    /// A boot script handed Talos to the machine (to install it, or to run it diskless).
    TalosHandedOut,
    /// The machine's node fetched its config.
    ConfigFetched,
    /// The node's Talos API answered with the cluster's certificates: the one evidence that
    /// marks a machine installed and ready.
    ReportedIn,
    /// The machine is to be installed again: the operator asked, the cluster is rebuilt, or its
    /// disk was shown not to boot.
    Reinstall,
}

impl Step {
    /// Every kind of step, with each role an edit can give (for tables and tests).
    pub fn all() -> Vec<Step> {
        let mut steps = Vec::new();
        for role in Role::ALL {
            steps.push(Step::Edited { role: *role });
        }
        steps.extend([
            Step::TalosHandedOut,
            Step::ConfigFetched,
            Step::ReportedIn,
            Step::Reinstall,
        ]);
        steps
    }

    /// What the step does to the machine's installed flag: `Some(true)` only for the node's own
    /// evidence, `Some(false)` for a reinstall, `None` to leave it.
    pub fn installed_after(&self) -> Option<bool> {
        match self {
            Step::ReportedIn => Some(true),
            Step::Reinstall => Some(false),
            _ => None,
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Edited { .. } => f.write_str("operator edit"),
            Step::TalosHandedOut => f.write_str("Talos handed out"),
            Step::ConfigFetched => f.write_str("config fetched"),
            Step::ReportedIn => f.write_str("reported in"),
            Step::Reinstall => f.write_str("reinstall"),
        }
    }
}

/// A step the table does not allow from the machine's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a machine in state {from} cannot take the step '{step}'")]
pub struct Forbidden {
    pub from: Lifecycle,
    pub step: Step,
}

/// The lifecycle table: the state a machine in `from` moves to when `step` happens, or
/// [`Forbidden`]. `installed` is the evidence kept from the machine's node (its Talos API once
/// answered with the cluster's certificates, and no reinstall since), never an operator's
/// claim. Staying in the same state is allowed and writes nothing.
///
/// Only an assigned machine boots Talos, fetches a config, is probed or reinstalled, so a
/// `discovered` machine takes no step but an operator's edit.
pub fn transition(from: Lifecycle, installed: bool, step: Step) -> Result<Lifecycle, Forbidden> {
    use Lifecycle::*;
    let forbidden = Err(Forbidden { from, step });
    match (step, from) {
        (Step::Edited { role }, _) => Ok(match (role, installed, from) {
            (Role::Unassigned, _, _) => Discovered,
            (_, true, Installed | Ready) => from,
            (_, true, _) => Installed,
            (_, false, Installed | Ready | Discovered) => Assigned,
            (_, false, other) => other,
        }),
        (_, Discovered) => forbidden,
        (Step::TalosHandedOut, _) => Ok(Booting),
        (Step::ConfigFetched, _) => Ok(ConfigServed),
        (Step::ReportedIn, _) => Ok(Ready),
        (Step::Reinstall, _) => Ok(Booting),
    }
}

/// Who asked for a network boot, by the evidence bootplane has for the requesting address (its
/// own DHCP lease, or the host's neighbour table), never by what the request says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requester {
    /// The evidence names this machine.
    Itself,
    /// No evidence either way (a routed requester, loopback).
    Unknown,
    /// The evidence names another MAC: the request is not the machine's.
    Other(Mac),
}

/// What the probes have seen of a machine's Talos API since it was sent to its disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Silence {
    /// Probes that failed the cluster's mTLS since the hand-off.
    pub failures: u32,
    /// From the hand-off to the last failed probe.
    pub silent_ms: i64,
}

/// How long a hand-off is watched, and how much silence makes a disk count as wiped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WipeRule {
    pub window_ms: i64,
    pub confirm_ms: i64,
    pub min_failures: u32,
}

/// What a network boot of an installed machine means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Netboot {
    /// To its disk; nothing starts or counts (the requester is not evidenced as the machine).
    DiskUntouched,
    /// To its disk, starting a hand-off watched for a wipe.
    DiskStartHandoff,
    /// To its disk again during a hand-off, keeping the first hand-off's time.
    DiskDuringHandoff,
    /// Its disk does not boot: reinstall it ([`Step::Reinstall`]).
    Reinstall,
}

/// Decides what a network boot of an installed machine means. The request is unauthenticated,
/// so it decides nothing by itself: only a requester evidenced as the machine starts or
/// continues a hand-off, and a reinstall needs the cluster's own evidence besides, the probes of
/// the machine's Talos API failing since the hand-off often and long enough. A healthy node
/// answers its probe, which ends the hand-off, so no sequence of requests reinstalls it.
pub fn netboot(
    requester: Requester,
    handoff_at: Option<i64>,
    silence: Silence,
    rule: WipeRule,
    now: i64,
) -> Netboot {
    if requester != Requester::Itself {
        return Netboot::DiskUntouched;
    }
    match handoff_at {
        Some(at) if now - at < rule.window_ms => {
            if silence.failures >= rule.min_failures && silence.silent_ms >= rule.confirm_ms {
                Netboot::Reinstall
            } else {
                Netboot::DiskDuringHandoff
            }
        }
        _ => Netboot::DiskStartHandoff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Lifecycle::*;

    /// The whole table, written out: for each state, without and with the node's evidence of
    /// an install, where each step leads ("-" refused), in the order of `Step::all()`: edits
    /// to unassigned, controlplane and worker, then Talos handed out, config fetched, reported
    /// in, reinstall.
    #[test]
    fn the_table_allows_exactly_these_transitions() {
        let expected = [
            "discovered          discovered assigned assigned - - - -",
            "discovered+evidence discovered installed installed - - - -",
            "assigned            discovered assigned assigned booting config-served ready booting",
            "assigned+evidence   discovered installed installed booting config-served ready booting",
            "booting             discovered booting booting booting config-served ready booting",
            "booting+evidence    discovered installed installed booting config-served ready booting",
            "config-served       discovered config-served config-served booting config-served ready booting",
            "config-served+evidence discovered installed installed booting config-served ready booting",
            "installed           discovered assigned assigned booting config-served ready booting",
            "installed+evidence  discovered installed installed booting config-served ready booting",
            "ready               discovered assigned assigned booting config-served ready booting",
            "ready+evidence      discovered ready ready booting config-served ready booting",
        ];
        let mut table = Vec::new();
        for from in Lifecycle::ALL {
            for installed in [false, true] {
                let row: Vec<String> = Step::all()
                    .into_iter()
                    .map(|step| match transition(*from, installed, step) {
                        Ok(to) => to.to_string(),
                        Err(_) => "-".into(),
                    })
                    .collect();
                let name = format!("{from}{}", if installed { "+evidence" } else { "" });
                table.push(format!("{name:<19} {}", row.join(" ")));
            }
        }
        assert_eq!(table, expected);
    }

    #[test]
    fn a_discovered_machine_is_never_marked_ready_by_a_probe() {
        assert_eq!(
            transition(Discovered, false, Step::ReportedIn),
            Err(Forbidden {
                from: Discovered,
                step: Step::ReportedIn
            })
        );
        let message = transition(Discovered, true, Step::ConfigFetched)
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            "a machine in state discovered cannot take the step 'config fetched'"
        );
    }

    #[test]
    fn only_the_nodes_answer_marks_a_machine_installed() {
        for step in Step::all() {
            let marks = step.installed_after() == Some(true);
            assert_eq!(marks, step == Step::ReportedIn, "{step:?}");
        }
        assert_eq!(Step::Reinstall.installed_after(), Some(false));
    }

    const RULE: WipeRule = WipeRule {
        window_ms: 600_000,
        confirm_ms: 30_000,
        min_failures: 3,
    };

    #[test]
    fn a_network_boot_reinstalls_only_the_machine_itself_after_enough_silence() {
        let long = Silence {
            failures: 3,
            silent_ms: 30_000,
        };
        let short = Silence {
            failures: 3,
            silent_ms: 29_999,
        };
        let few = Silence {
            failures: 2,
            silent_ms: 60_000,
        };
        let other = Requester::Other(Mac([2, 0, 0, 0, 0, 1]));
        let at = Some(1_000);
        let cases = [
            (Requester::Itself, None, long, Netboot::DiskStartHandoff),
            (Requester::Itself, at, long, Netboot::Reinstall),
            (Requester::Itself, at, short, Netboot::DiskDuringHandoff),
            (Requester::Itself, at, few, Netboot::DiskDuringHandoff),
            (Requester::Unknown, at, long, Netboot::DiskUntouched),
            (other, at, long, Netboot::DiskUntouched),
            (other, None, long, Netboot::DiskUntouched),
        ];
        for (requester, handoff, silence, expected) in cases {
            assert_eq!(
                netboot(requester, handoff, silence, RULE, 40_000),
                expected,
                "{requester:?} {handoff:?} {silence:?}"
            );
        }
        // Past the window, a network boot starts a new hand-off instead.
        assert_eq!(
            netboot(Requester::Itself, at, long, RULE, 1_000 + 600_000),
            Netboot::DiskStartHandoff
        );
    }
}
