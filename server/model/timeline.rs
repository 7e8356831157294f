//! A machine's current boot as steps on a time line (DHCP → iPXE → script → kernel →
//! initramfs → config → Talos events → ready), what it waits for now, and whether it has waited
//! longer than that step should take, with the likely causes. Computed from the machine's event
//! log and two live readings (a transfer in flight, the Talos API probe); no I/O here.

use serde::Serialize;

use super::{Event, EventKind, Lifecycle, Machine, Role};

/// The steps of a network boot, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The firmware's DHCP exchange with bootplane.
    Dhcp,
    /// iPXE loaded: its binary fetched over TFTP, or its own DHCP request seen.
    Ipxe,
    /// The per-machine iPXE script served.
    Script,
    /// The kernel download started.
    Kernel,
    /// The initramfs download started.
    Initramfs,
    /// Talos fetched its machine config.
    Config,
    /// Talos pushed an event (its event sink).
    Talos,
    /// The Talos API answered with the cluster's certificates.
    Ready,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::Dhcp,
        Phase::Ipxe,
        Phase::Script,
        Phase::Kernel,
        Phase::Initramfs,
        Phase::Config,
        Phase::Talos,
        Phase::Ready,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Phase::Dhcp => "DHCP",
            Phase::Ipxe => "iPXE",
            Phase::Script => "script",
            Phase::Kernel => "kernel",
            Phase::Initramfs => "initramfs",
            Phase::Config => "config",
            Phase::Talos => "Talos events",
            Phase::Ready => "ready",
        }
    }

    /// How long a machine may stay at this step before the next one is overdue, in seconds
    /// (before scaling), and the likely causes when it is. `None`: no time limit (ready).
    fn limit(self) -> Option<(i64, &'static [&'static str])> {
        match self {
            Phase::Dhcp => Some((
                60,
                &[
                    "the firmware got bootplane's offer but did not load iPXE: TFTP (UDP 69) blocked between them",
                    "Secure Boot refused the iPXE binary (switch Secure Boot off, or use a signed chain)",
                    "another DHCP server's boot file was taken instead (proxyDHCP beside a router that also offers one)",
                ],
            )),
            Phase::Ipxe => Some((
                60,
                &[
                    "iPXE cannot reach bootplane over HTTP: a firewall on the HTTP port, or an advertised address the LAN cannot reach (--advertise-ip)",
                    "iPXE got no address of its own (the DHCP server's pool is full, or it answers the firmware only)",
                ],
            )),
            Phase::Script => Some((
                120,
                &[
                    "the kernel download did not start: boot assets missing or out of service (see Boot assets)",
                    "iPXE failed on the script: see the machine's console",
                ],
            )),
            Phase::Kernel => Some((
                600,
                &[
                    "the kernel download stalled or failed: a slow or lossy link, or the asset went out of service",
                ],
            )),
            Phase::Initramfs => Some((
                300,
                &[
                    "kernel arguments: the kernel started but Talos did not fetch its config (see the console; console= and talos.config=)",
                    "network: Talos got no address, or its NIC has no driver in the initramfs (an Image Factory schematic with the driver)",
                    "the initramfs download stalled or failed",
                ],
            )),
            Phase::Config => Some((
                600,
                &[
                    "install failing: see the machine's boot log (no disk matched the install disk selector, or the installer image cannot be pulled)",
                    "the Talos API (TCP 50000) is not reachable from bootplane",
                ],
            )),
            Phase::Talos => Some((
                600,
                &[
                    "Talos runs but its API does not answer with this cluster's certificates: still installing or rebooting, or it runs another cluster's config",
                    "see the machine's boot log",
                ],
            )),
            Phase::Ready => None,
        }
    }
}

/// A download of a boot asset in flight, as the HTTP server counts it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Transfer {
    /// "kernel" or "initramfs".
    pub asset: String,
    pub sent: u64,
    pub total: u64,
    /// When it started, milliseconds since the Unix epoch.
    pub started_ms: i64,
}

/// The orchestrator's probes of a machine's Talos API since they started: where, since when,
/// how many, and the last failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ProbeView {
    /// `address:port` probed.
    pub target: String,
    pub since_ms: i64,
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// A step reached in the current boot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Mark {
    pub phase: Phase,
    /// When it was reached, milliseconds since the Unix epoch.
    pub at: i64,
}

/// A machine that has waited at one step longer than the step should take.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Stuck {
    /// The step it is stuck after.
    pub after: Phase,
    /// How long it has been there, in milliseconds.
    pub for_ms: i64,
    /// What usually causes this, most likely first.
    pub causes: Vec<String>,
}

/// A machine's current boot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct BootTimeline {
    /// Steps reached in this boot, in order (a new firmware DHCP request starts a new boot).
    pub marks: Vec<Mark>,
    /// What it waits for now, spelled out.
    pub wait: String,
    pub stuck: Option<Stuck>,
    /// A kernel or initramfs download in flight.
    pub transfer: Option<Transfer>,
    /// Nothing is awaited from this boot: the machine is ready, or was sent to its disk.
    pub settled: bool,
}

/// What the timeline is computed from besides the events.
#[derive(Clone, Debug, Default)]
pub struct Live {
    pub transfer: Option<Transfer>,
    pub probe: Option<ProbeView>,
    /// Milliseconds per second of a step's time limit: 1000 in real use (tests shorten it).
    pub ms_per_limit_second: i64,
    /// How often a waiting machine asks again (its script's retry), in seconds.
    pub retry_secs: u32,
}

impl Live {
    /// Milliseconds per second of a step's limit (1000 unless a test shortened it).
    fn scale(&self) -> i64 {
        if self.ms_per_limit_second > 0 {
            self.ms_per_limit_second
        } else {
            1000
        }
    }
}

/// "8 min", "42 s", "2 h 5 min".
pub fn span(ms: i64) -> String {
    let secs = ms.max(0) / 1000;
    match secs {
        0..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min", secs / 60),
        _ if secs % 3600 / 60 == 0 => format!("{} h", secs / 3600),
        _ => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_000_000.0)
}

/// Whether an event is a DHCP exchange of the network boot (the firmware's or iPXE's): an
/// address-only exchange (Talos taking or renewing its address in full mode, an ordinary
/// client) names no boot file and no client architecture.
fn is_boot_dhcp(event: &Event) -> bool {
    matches!(
        event.kind,
        EventKind::DhcpOffer
            | EventKind::DhcpAck
            | EventKind::ProxyOffer
            | EventKind::ProxyAck
            | EventKind::NotServed
    ) && (event.kind == EventKind::NotServed
        || event.detail.contains("file=")
        || event.detail.contains("arch="))
}

/// Why a boot DHCP exchange could not serve the machine, when it says (`not-served` events in
/// proxy mode; a full-mode address reply with " not served: " in its detail).
fn not_served_reason(event: &Event) -> Option<String> {
    if event.kind == EventKind::NotServed {
        return Some(event.detail.clone());
    }
    event
        .detail
        .split_once(" not served: ")
        .map(|(_, why)| why.to_string())
}

/// The step an event shows a machine reached, if any. A DHCP exchange is iPXE's own when the
/// boot file handed out is bootplane's script.
fn phase_of(event: &Event) -> Option<Phase> {
    Some(match event.kind {
        EventKind::DhcpOffer
        | EventKind::DhcpAck
        | EventKind::ProxyOffer
        | EventKind::ProxyAck
        | EventKind::NotServed => {
            if !is_boot_dhcp(event) {
                return None;
            }
            if event.detail.contains("/boot.ipxe") {
                Phase::Ipxe
            } else {
                Phase::Dhcp
            }
        }
        EventKind::TftpServed => Phase::Ipxe,
        EventKind::ScriptServed => Phase::Script,
        EventKind::KernelFetched => Phase::Kernel,
        EventKind::InitramfsFetched => Phase::Initramfs,
        // Only a config served: a refusal or a device-flow request is logged under the same
        // kind, with why.
        EventKind::ConfigFetched if event.detail.starts_with("served ") => Phase::Config,
        EventKind::ConfigFetched => return None,
        EventKind::TalosEvent => Phase::Talos,
        EventKind::ReportedIn => Phase::Ready,
        _ => return None,
    })
}

/// A config request that got no config: refused, or not servable (device-flow requests and
/// approvals are logged under the same kind and are no failure).
fn config_failure(event: &Event) -> Option<String> {
    (event.kind == EventKind::ConfigFetched
        && (event.detail.starts_with("refused (") || event.detail.starts_with("not served (")))
    .then(|| event.detail.clone())
}

/// The current boot of `machine` from its events (oldest first), at `now`.
pub fn timeline(machine: &Machine, events: &[Event], live: &Live, now: i64) -> BootTimeline {
    let mut marks: Vec<Mark> = Vec::new();
    let mut last_script = None;
    let mut not_served = None;
    // The latest config request that got no config, while none was served since.
    let mut config_refused: Option<String> = None;
    // Talos pushes events all along: its newest one, not its first, is the last sign of life.
    let mut last_talos = None;
    for event in events {
        if let Some(why) = config_failure(event) {
            config_refused = Some(why);
        }
        let Some(phase) = phase_of(event) else {
            continue;
        };
        // A network boot's DHCP exchange after later steps of this boot is a new boot (the
        // firmware's, or an iPXE ROM's that starts at iPXE).
        if matches!(phase, Phase::Dhcp | Phase::Ipxe)
            && is_boot_dhcp(event)
            && marks.iter().any(|m| m.phase > phase)
        {
            marks.clear();
            last_script = None;
            not_served = None;
            config_refused = None;
            last_talos = None;
        }
        if is_boot_dhcp(event) {
            not_served = not_served_reason(event);
        }
        match phase {
            Phase::Config => config_refused = None,
            Phase::Script => last_script = Some(event.detail.clone()),
            Phase::Talos => last_talos = Some(event.at),
            _ => {}
        }
        // The first time each step is reached in this boot; steps are never undone within it,
        // and one that comes out of order (Talos's events start before it fetches its config)
        // is kept in its place.
        if !marks.iter().any(|m| m.phase == phase) {
            marks.push(Mark {
                phase,
                at: event.at,
            });
            marks.sort_by_key(|m| m.phase);
        }
    }
    if machine.state == Lifecycle::Ready && !marks.iter().any(|m| m.phase == Phase::Ready) {
        // Ready from an earlier boot, sent to its disk since: nothing is awaited, unless its
        // Talos API has stayed silent since the hand-off for longer than a boot takes.
        let silent = live
            .probe
            .as_ref()
            .filter(|p| now.saturating_sub(p.since_ms) > 600_i64.saturating_mul(live.scale()));
        let (wait, stuck) = match silent {
            Some(p) => (
                format!(
                    "sent to its disk; probing {} for {}: {}",
                    p.target,
                    span(now.saturating_sub(p.since_ms)),
                    p.last_error.as_deref().unwrap_or("no answer yet")
                ),
                Some(Stuck {
                    after: Phase::Ready,
                    for_ms: now.saturating_sub(p.since_ms),
                    causes: vec![
                        "it did not come back from its disk: see its console (a failed upgrade, a disk gone, or it boots another OS first)".into(),
                    ],
                }),
            ),
            None => ("ready".into(), None),
        };
        return BootTimeline {
            marks,
            wait,
            stuck,
            transfer: None,
            settled: true,
        };
    }
    let reached = marks.last().map(|m| m.phase);
    let since = match reached {
        Some(Phase::Talos) => last_talos,
        _ => marks.iter().map(|m| m.at).max(),
    }
    .or(machine.state_since)
    .unwrap_or(now);
    let waited = now.saturating_sub(since);
    let scale = live.scale();
    let overdue = |phase: Phase| -> Option<Stuck> {
        let (secs, causes) = phase.limit()?;
        (waited > secs.saturating_mul(scale)).then(|| Stuck {
            after: phase,
            for_ms: waited,
            causes: causes.iter().map(|c| c.to_string()).collect(),
        })
    };
    let transfer = live
        .transfer
        .clone()
        .filter(|t| t.sent < t.total && matches!(reached, Some(Phase::Kernel | Phase::Initramfs)));
    // Set where this boot awaits nothing more (sent to its disk).
    let mut settled = reached == Some(Phase::Ready);
    let (wait, stuck) = match reached {
        Some(Phase::Dhcp | Phase::Ipxe) if not_served.is_some() => {
            let why = not_served.unwrap_or_default();
            let stuck = Stuck {
                after: reached.unwrap_or(Phase::Dhcp),
                for_ms: waited,
                causes: vec![format!("bootplane cannot serve it: {why}")],
            };
            (format!("not served: {why}"), Some(stuck))
        }
        _ if machine.role == Role::Unassigned => (
            format!(
                "waiting for a role: assign it, and it boots on within {} s",
                live.retry_secs
            ),
            None,
        ),
        None => {
            let wait = "waiting for its first network boot".to_string();
            // Assigned but never seen: the clock runs from the assignment.
            let stuck = (waited > 600_i64.saturating_mul(scale)).then(|| Stuck {
                after: Phase::Dhcp,
                for_ms: waited,
                causes: vec![
                    "no DHCP request seen: the firmware does not boot from the network first (boot order), or the machine is off".into(),
                    "the NIC is not on bootplane's LAN (another VLAN, or a DHCP relay that does not forward to bootplane)".into(),
                ],
            });
            (wait, stuck)
        }
        Some(Phase::Dhcp) => (
            format!(
                "waiting for iPXE to load (DHCP answered {} ago)",
                span(waited)
            ),
            overdue(Phase::Dhcp),
        ),
        Some(Phase::Ipxe) => (
            format!(
                "waiting for iPXE to fetch its script ({} since iPXE)",
                span(waited)
            ),
            overdue(Phase::Ipxe),
        ),
        Some(Phase::Script) => {
            let detail = last_script.unwrap_or_default();
            if detail.starts_with("installed") {
                settled = true;
                (format!("sent to its disk ({detail})"), None)
            } else if detail.starts_with("boot assets") || detail.contains("too long") {
                let stuck = Stuck {
                    after: Phase::Script,
                    for_ms: waited,
                    causes: vec![format!("{detail}: it retries every {} s", live.retry_secs)],
                };
                (format!("cannot boot Talos: {detail}"), Some(stuck))
            } else {
                (
                    format!(
                        "waiting for the kernel download ({} since the script)",
                        span(waited)
                    ),
                    overdue(Phase::Script),
                )
            }
        }
        Some(Phase::Kernel | Phase::Initramfs)
            if config_refused.is_some() && transfer.is_none() =>
        {
            let why = config_refused.unwrap_or_default();
            let stuck = Stuck {
                after: Phase::Initramfs,
                for_ms: waited,
                causes: vec![format!(
                    "Talos asked for its config and got none: {why} (see --config-access)"
                )],
            };
            (format!("config not served: {why}"), Some(stuck))
        }
        Some(phase @ (Phase::Kernel | Phase::Initramfs)) => {
            let wait = match &transfer {
                Some(t) => format!(
                    "downloading the {}: {} of {} ({} %)",
                    t.asset,
                    mb(t.sent),
                    mb(t.total),
                    t.sent.saturating_mul(100) / t.total.max(1)
                ),
                None if phase == Phase::Kernel => {
                    format!(
                        "waiting for the initramfs download ({} since the kernel)",
                        span(waited)
                    )
                }
                None => format!(
                    "waiting for Talos to fetch its config ({} since the initramfs)",
                    span(waited)
                ),
            };
            // A download still moving is not stuck, however slow the link.
            let stuck = if transfer.is_some() {
                None
            } else {
                overdue(phase)
            };
            (wait, stuck)
        }
        Some(phase @ (Phase::Config | Phase::Talos)) => {
            let wait = match &live.probe {
                Some(p) => format!(
                    "probing {} for {}: {}",
                    p.target,
                    span(now.saturating_sub(p.since_ms)),
                    p.last_error.as_deref().unwrap_or("no answer yet")
                ),
                None => format!(
                    "waiting for the Talos API to answer ({} since the {})",
                    span(waited),
                    if phase == Phase::Config {
                        "config"
                    } else {
                        "last Talos event"
                    }
                ),
            };
            let stuck = overdue(phase).map(|mut s| {
                if let Some(e) = live.probe.as_ref().and_then(|p| p.last_error.as_ref()) {
                    s.causes.push(format!("the last probe said: {e}"));
                }
                s
            });
            (wait, stuck)
        }
        Some(Phase::Ready) => ("ready".into(), None),
    };
    BootTimeline {
        marks,
        wait,
        stuck,
        transfer,
        settled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Mac;

    const T0: i64 = 1_800_000_000_000;

    fn machine(role: Role, state: Lifecycle) -> Machine {
        let mut m = Machine::discovered("52:54:00:00:00:31".parse::<Mac>().unwrap());
        m.role = role;
        m.state = state;
        m.state_since = Some(T0);
        m
    }

    fn ev(at_s: i64, kind: EventKind, detail: &str) -> Event {
        Event {
            mac: "52:54:00:00:00:31".parse().unwrap(),
            at: T0 + at_s * 1000,
            kind,
            detail: detail.into(),
        }
    }

    fn live() -> Live {
        Live {
            ms_per_limit_second: 1000,
            retry_secs: 10,
            ..Live::default()
        }
    }

    fn boot_to_config() -> Vec<Event> {
        vec![
            ev(0, EventKind::ProxyOffer, "file=undionly.kpxe arch=0"),
            ev(2, EventKind::TftpServed, "undionly.kpxe"),
            ev(
                4,
                EventKind::ProxyOffer,
                "file=http://10.0.0.1:8080/boot.ipxe",
            ),
            ev(
                5,
                EventKind::ScriptServed,
                "install Talos v1.13.9 amd64 as worker",
            ),
            ev(6, EventKind::KernelFetched, "v1.13.9/vmlinuz-amd64"),
            ev(9, EventKind::InitramfsFetched, "v1.13.9/initramfs-amd64.xz"),
            ev(30, EventKind::ConfigFetched, "served 2931 bytes sha256:ab"),
        ]
    }

    #[test]
    fn every_step_is_marked_once_at_its_first_sighting_in_order() {
        let m = machine(Role::Worker, Lifecycle::ConfigServed);
        let mut events = boot_to_config();
        events.insert(
            3,
            ev(
                4,
                EventKind::ProxyAck,
                "file=http://10.0.0.1:8080/boot.ipxe",
            ),
        );
        let t = timeline(&m, &events, &live(), T0 + 40_000);
        let phases: Vec<Phase> = t.marks.iter().map(|m| m.phase).collect();
        assert_eq!(&phases, &Phase::ALL[..6]);
        assert_eq!(t.marks[1].at, T0 + 2000, "iPXE at the TFTP transfer");
        assert!(t.stuck.is_none());
        assert!(!t.settled, "a boot in progress");
        assert!(
            t.wait.starts_with("waiting for the Talos API"),
            "{}",
            t.wait
        );
    }

    #[test]
    fn a_new_firmware_dhcp_request_starts_a_new_boot() {
        let m = machine(Role::Worker, Lifecycle::ConfigServed);
        let mut events = boot_to_config();
        events.push(ev(
            100,
            EventKind::DhcpAck,
            "file=ipxe.efi arch=7 ip=10.0.0.50",
        ));
        let t = timeline(&m, &events, &live(), T0 + 101_000);
        assert_eq!(
            t.marks,
            vec![Mark {
                phase: Phase::Dhcp,
                at: T0 + 100_000
            }]
        );
        assert!(t.wait.starts_with("waiting for iPXE to load"), "{}", t.wait);
    }

    #[test]
    fn config_served_without_an_api_for_too_long_is_stuck_with_the_probe_and_the_boot_log() {
        let m = machine(Role::Worker, Lifecycle::ConfigServed);
        let probe = ProbeView {
            target: "10.66.0.22:50000".into(),
            since_ms: T0 + 30_000,
            attempts: 90,
            last_error: Some("connection refused".into()),
        };
        let l = Live {
            probe: Some(probe),
            ..live()
        };
        // Eight minutes: the wait is spelled out, not yet flagged.
        let t = timeline(&m, &boot_to_config(), &l, T0 + 30_000 + 480_000);
        assert_eq!(
            t.wait,
            "probing 10.66.0.22:50000 for 8 min: connection refused"
        );
        assert!(t.stuck.is_none());
        // Past the config step's ten minutes: flagged, with the causes for that step.
        let t = timeline(&m, &boot_to_config(), &l, T0 + 30_000 + 601_000);
        let stuck = t.stuck.expect("stuck after the config");
        assert_eq!(stuck.after, Phase::Config);
        assert!(stuck.causes[0].contains("boot log"), "{:?}", stuck.causes);
        assert!(stuck
            .causes
            .iter()
            .any(|c| c.contains("connection refused")));
    }

    #[test]
    fn each_step_has_its_own_limit_and_causes() {
        let m = machine(Role::Worker, Lifecycle::Booting);
        let events = boot_to_config();
        for (upto, limit_s, cause) in [
            (1, 60, "TFTP"),
            (2, 60, "HTTP"),
            (4, 120, "kernel download"),
            (5, 600, "stalled"),
            (6, 300, "kernel arguments"),
        ] {
            let last = events[upto - 1].at;
            let seen = &events[..upto];
            let before = timeline(&m, seen, &live(), last + limit_s * 1000);
            assert!(before.stuck.is_none(), "{upto}: flagged at its limit");
            let after = timeline(&m, seen, &live(), last + limit_s * 1000 + 1);
            let stuck = after.stuck.unwrap_or_else(|| panic!("{upto}: not flagged"));
            assert!(
                stuck.causes[0].contains(cause),
                "{upto}: {:?}",
                stuck.causes
            );
        }
    }

    #[test]
    fn a_refused_config_request_is_no_config_and_says_why_at_once() {
        let m = machine(Role::Worker, Lifecycle::Booting);
        let mut events = boot_to_config();
        events.pop();
        events.push(ev(
            30,
            EventKind::ConfigFetched,
            "refused (403): no bearer token (--config-access oauth)",
        ));
        let t = timeline(&m, &events, &live(), T0 + 31_000);
        assert_eq!(t.marks.last().map(|m| m.phase), Some(Phase::Initramfs));
        assert_eq!(
            t.wait,
            "config not served: refused (403): no bearer token (--config-access oauth)"
        );
        assert!(t.stuck.expect("flagged").causes[0].contains("no bearer token"));
        // Served afterwards: the refusal is history.
        events.push(ev(
            40,
            EventKind::ConfigFetched,
            "served 2931 bytes sha256:ab",
        ));
        let t = timeline(&m, &events, &live(), T0 + 41_000);
        assert_eq!(t.marks.last().map(|m| m.phase), Some(Phase::Config));
        assert!(t.stuck.is_none());
    }

    #[test]
    fn an_ipxe_rom_starts_a_new_boot_at_ipxe_and_an_address_only_exchange_is_no_boot() {
        let m = machine(Role::Worker, Lifecycle::ConfigServed);
        let mut events = boot_to_config();
        // Talos taking its address from bootplane's full DHCP: no boot file, no architecture.
        events.push(ev(40, EventKind::DhcpAck, "ip=10.0.0.50"));
        let t = timeline(&m, &events, &live(), T0 + 41_000);
        assert_eq!(
            t.marks.len(),
            6,
            "an address-only exchange started a new boot"
        );
        // A VM whose NIC firmware is iPXE: its first exchange already names the script.
        events.push(ev(
            100,
            EventKind::DhcpAck,
            "file=http://10.0.0.1:8080/boot.ipxe ip=10.0.0.50",
        ));
        let t = timeline(&m, &events, &live(), T0 + 101_000);
        assert_eq!(
            t.marks,
            vec![Mark {
                phase: Phase::Ipxe,
                at: T0 + 100_000
            }]
        );
    }

    #[test]
    fn talos_events_before_the_config_keep_both_steps_and_time_runs_from_the_newest_event() {
        let m = machine(Role::Worker, Lifecycle::ConfigServed);
        let mut events = boot_to_config();
        let config = events.pop().unwrap();
        events.push(ev(20, EventKind::TalosEvent, "machine.SequenceEvent boot"));
        events.push(config);
        events.push(ev(700, EventKind::TalosEvent, "machine.PhaseEvent install"));
        let t = timeline(&m, &events, &live(), T0 + 800_000);
        let phases: Vec<Phase> = t.marks.iter().map(|m| m.phase).collect();
        assert_eq!(&phases, &Phase::ALL[..7]);
        assert!(t.stuck.is_none(), "a node still sending events was flagged");
        let t = timeline(&m, &events, &live(), T0 + 1_301_000);
        assert_eq!(t.stuck.map(|s| s.after), Some(Phase::Talos));
    }

    #[test]
    fn an_unassigned_client_that_cannot_be_served_is_flagged_not_told_to_wait_for_a_role() {
        let m = machine(Role::Unassigned, Lifecycle::Discovered);
        let events = [ev(
            0,
            EventKind::NotServed,
            "arm64 client, but ipxe-arm64.efi is not in /usr/lib/ipxe",
        )];
        let t = timeline(&m, &events, &live(), T0 + 1000);
        assert!(t.wait.starts_with("not served: arm64"), "{}", t.wait);
        assert!(t.stuck.is_some());
        // Full mode: the address reply says it in its detail.
        let events = [ev(0, EventKind::DhcpOffer, "arch=11 ip=10.0.0.60 not served: arm64 client, but ipxe-arm64.efi is not in /usr/lib/ipxe")];
        let t = timeline(&m, &events, &live(), T0 + 1000);
        assert!(t.wait.starts_with("not served: arm64"), "{}", t.wait);
    }

    #[test]
    fn a_slow_download_still_moving_is_not_stuck() {
        let m = machine(Role::Worker, Lifecycle::Booting);
        let moving = Live {
            transfer: Some(Transfer {
                asset: "initramfs".into(),
                sent: 1,
                total: 2,
                started_ms: T0 + 9000,
            }),
            ..live()
        };
        let t = timeline(&m, &boot_to_config()[..6], &moving, T0 + 9000 + 3_600_000);
        assert!(t.stuck.is_none());
        assert!(
            t.wait.starts_with("downloading the initramfs"),
            "{}",
            t.wait
        );
    }

    #[test]
    fn device_flow_requests_are_no_config_failure() {
        let m = machine(Role::Worker, Lifecycle::Booting);
        let mut events = boot_to_config();
        events.pop();
        events.push(ev(
            30,
            EventKind::ConfigFetched,
            "device flow: code ABCD-EFGH waits for an operator's approval",
        ));
        let t = timeline(&m, &events, &live(), T0 + 31_000);
        assert!(!t.wait.starts_with("config not served"), "{}", t.wait);
        assert!(t.stuck.is_none());
    }

    #[test]
    fn an_installed_machine_is_sent_to_its_disk_and_a_ready_one_that_never_comes_back_is_flagged() {
        let m = machine(Role::Worker, Lifecycle::Installed);
        let events = [
            ev(0, EventKind::DhcpAck, "file=ipxe.efi arch=7 ip=10.0.0.50"),
            ev(3, EventKind::ScriptServed, "installed: disk hand-off exit"),
        ];
        let t = timeline(&m, &events, &live(), T0 + 3_600_000);
        assert_eq!(t.wait, "sent to its disk (installed: disk hand-off exit)");
        assert!(t.stuck.is_none());
        assert!(t.settled);
        let ready = machine(Role::Worker, Lifecycle::Ready);
        let silent = Live {
            probe: Some(ProbeView {
                target: "10.0.0.50:50000".into(),
                since_ms: T0 + 3000,
                attempts: 600,
                last_error: Some("connection refused".into()),
            }),
            ..live()
        };
        let t = timeline(&ready, &events, &silent, T0 + 3000 + 601_000);
        assert!(
            t.wait
                .starts_with("sent to its disk; probing 10.0.0.50:50000"),
            "{}",
            t.wait
        );
        assert_eq!(t.stuck.map(|s| s.after), Some(Phase::Ready));
    }

    #[test]
    fn a_shorter_limit_scale_flags_sooner() {
        let m = machine(Role::Worker, Lifecycle::ConfigServed);
        let fast = Live {
            ms_per_limit_second: 10,
            ..live()
        };
        let t = timeline(&m, &boot_to_config(), &fast, T0 + 30_000 + 6_001);
        assert_eq!(t.stuck.map(|s| s.after), Some(Phase::Config));
    }

    #[test]
    fn a_download_in_flight_shows_its_bytes() {
        let m = machine(Role::Worker, Lifecycle::Booting);
        let l = Live {
            transfer: Some(Transfer {
                asset: "initramfs".into(),
                sent: 23_100_000,
                total: 80_000_000,
                started_ms: T0 + 9000,
            }),
            ..live()
        };
        let t = timeline(&m, &boot_to_config()[..6], &l, T0 + 20_000);
        assert_eq!(
            t.wait,
            "downloading the initramfs: 23.1 MB of 80.0 MB (28 %)"
        );
        assert_eq!(t.transfer.map(|t| t.sent), Some(23_100_000));
    }

    #[test]
    fn waiting_for_a_role_is_never_stuck_and_an_unservable_client_is_at_once() {
        let m = machine(Role::Unassigned, Lifecycle::Discovered);
        let events = [
            ev(0, EventKind::ProxyOffer, "file=undionly.kpxe arch=0"),
            ev(3, EventKind::ScriptServed, "waiting for assignment"),
        ];
        let t = timeline(&m, &events, &live(), T0 + 86_400_000);
        assert!(t.wait.starts_with("waiting for a role"), "{}", t.wait);
        assert!(t.stuck.is_none());

        let m = machine(Role::Worker, Lifecycle::Assigned);
        let events = [ev(
            0,
            EventKind::NotServed,
            "arm64 client, but ipxe-arm64.efi is not in /usr/lib/ipxe",
        )];
        let t = timeline(&m, &events, &live(), T0 + 1000);
        assert!(t.wait.starts_with("not served: arm64 client"), "{}", t.wait);
        assert!(t.stuck.expect("flagged").causes[0].contains("ipxe-arm64.efi"));
    }

    #[test]
    fn an_assigned_machine_never_seen_is_flagged_for_boot_order_or_vlan_after_ten_minutes() {
        let m = machine(Role::Controlplane, Lifecycle::Assigned);
        let t = timeline(&m, &[], &live(), T0 + 599_000);
        assert_eq!(t.wait, "waiting for its first network boot");
        assert!(t.stuck.is_none());
        let t = timeline(&m, &[], &live(), T0 + 601_000);
        let causes = t.stuck.expect("flagged").causes.join(" ");
        assert!(
            causes.contains("boot order") && causes.contains("VLAN"),
            "{causes}"
        );
    }

    #[test]
    fn a_ready_machine_sent_to_its_disk_waits_for_nothing() {
        let m = machine(Role::Worker, Lifecycle::Ready);
        let events = [
            ev(0, EventKind::DhcpAck, "file=ipxe.efi arch=7 ip=10.0.0.50"),
            ev(3, EventKind::ScriptServed, "installed: disk hand-off exit"),
        ];
        let t = timeline(&m, &events, &live(), T0 + 3_600_000);
        assert_eq!(t.wait, "ready");
        assert!(t.stuck.is_none());
        assert!(t.settled);
        assert_eq!(span(8 * 60_000 + 5_000), "8 min");
        assert_eq!(span(7_500_000), "2 h 5 min");
    }
}
