//! The OAuth2 device-authorization flow behind `--config-access oauth` (RFC 8628): pending
//! requests, operator approvals and armed windows, and the bearer tokens that open one
//! machine's config. In memory and bounded; the HTTP endpoints Talos calls are `boot::oauth`,
//! the operator's page `ui/devices.rs`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use rand::Rng;

use super::{random_secret, sha256_hex};
use crate::model::Mac;

pub const CLIENT_ID: &str = crate::talos::kernel::OAUTH_CLIENT_ID;
/// The device-code grant type (RFC 8628 §3.4).
pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// How long a device request waits for approval.
pub const REQUEST_TTL_MS: i64 = 10 * 60 * 1000;
/// How long an issued token fetches its machine's config.
pub const TOKEN_TTL_MS: i64 = 15 * 60 * 1000;
/// Seconds between polls the client is told to keep.
pub const POLL_INTERVAL_SECS: u64 = 2;
/// Device requests pending at once: in all, per requesting address and per MAC. Past the total
/// or the MAC's share, the oldest pending request without address evidence gives way (a
/// stranger's flood cannot keep the real machine's request out); past the address's share,
/// or when every pending request has evidence, a new one is refused.
pub const MAX_PENDING: usize = 256;
pub const MAX_PENDING_PER_ADDRESS: usize = 8;
pub const MAX_PENDING_PER_MAC: usize = 4;

/// What bootplane knows of the requesting address (`boot::address_owner`): the machine's
/// own, unknown, or another MAC's. Only the first lets an armed window approve by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evidence {
    Itself,
    Unknown,
    Other(Mac),
}
/// Tokens alive at once; past it the oldest goes.
pub const MAX_TOKENS: usize = 1024;
/// Longest arming window an operator may set.
pub const MAX_ARM_MINUTES: u32 = 24 * 60;

/// What an approval is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ArmScope {
    Machine(Mac),
    Cluster(String),
}

#[derive(Clone, Debug)]
pub struct Armed {
    pub scope: ArmScope,
    pub until_ms: i64,
    pub by: String,
    /// Machines that already used this arming (one install each).
    pub used: Vec<Mac>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Pending,
    Approved { by: String },
    Denied { by: String },
}

/// A device request as the UI shows it.
#[derive(Clone, Debug)]
pub struct DeviceRequest {
    pub user_code: String,
    pub mac: Mac,
    pub from: Option<IpAddr>,
    pub evidence: Evidence,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub decision: Decision,
}

#[derive(Debug, Default)]
struct Flows {
    /// By SHA-256 of the device code (only the machine knows the code itself).
    requests: HashMap<String, DeviceRequest>,
    /// By SHA-256 of the access token: the machine it opens and until when.
    tokens: HashMap<String, (Mac, i64)>,
    armed: Vec<Armed>,
}

/// The device flow's state; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct DeviceFlow(Arc<Mutex<Flows>>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlowError {
    #[error("too many device requests are waiting; try again later")]
    Busy,
    #[error("no pending device request with code {0}")]
    UnknownCode(String),
    #[error("{0}")]
    Invalid(String),
}

impl DeviceFlow {
    fn lock(&self) -> std::sync::MutexGuard<'_, Flows> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new device request for `mac` from `from`; approved at once when an arming covers it.
    /// Returns the device code and the request.
    pub fn request(
        &self,
        mac: Mac,
        cluster: &str,
        from: Option<IpAddr>,
        evidence: Evidence,
        now: i64,
    ) -> Result<(String, DeviceRequest), FlowError> {
        let mut flows = self.lock();
        flows.requests.retain(|_, r| r.expires_ms > now);
        flows.armed.retain(|a| a.until_ms > now);
        let pending = |r: &DeviceRequest| r.decision == Decision::Pending;
        let here = flows
            .requests
            .values()
            .filter(|r| pending(r) && r.from == from)
            .count();
        if here >= MAX_PENDING_PER_ADDRESS {
            return Err(FlowError::Busy);
        }
        let same_mac = flows
            .requests
            .values()
            .filter(|r| pending(r) && r.mac == mac)
            .count();
        let all = flows.requests.values().filter(|r| pending(r)).count();
        if same_mac >= MAX_PENDING_PER_MAC || all >= MAX_PENDING {
            // The oldest pending request with no evidence for its address (of this MAC, when
            // the MAC's share is the limit) gives way.
            let victim = flows
                .requests
                .iter()
                .filter(|(_, r)| {
                    pending(r)
                        && r.evidence != Evidence::Itself
                        && (same_mac < MAX_PENDING_PER_MAC || r.mac == mac)
                })
                .min_by_key(|(_, r)| r.created_ms)
                .map(|(k, _)| k.clone());
            match victim {
                Some(key) => {
                    flows.requests.remove(&key);
                }
                None => return Err(FlowError::Busy),
            }
        }
        let device_code = random_secret(32);
        let mut decision = Decision::Pending;
        // An armed window approves only a request whose address is the machine's own: the
        // MAC in the form is a claim anyone on the LAN can make.
        let armed_list = if evidence == Evidence::Itself {
            flows.armed.iter_mut()
        } else {
            [].iter_mut()
        };
        for armed in armed_list {
            let covers = match &armed.scope {
                ArmScope::Machine(m) => *m == mac,
                ArmScope::Cluster(c) => c == cluster,
            };
            if covers && !armed.used.contains(&mac) {
                armed.used.push(mac);
                decision = Decision::Approved {
                    by: format!("armed by {}", armed.by),
                };
                break;
            }
        }
        flows.armed.retain(|a| match &a.scope {
            ArmScope::Machine(m) => !a.used.contains(m),
            ArmScope::Cluster(_) => true,
        });
        let request = DeviceRequest {
            user_code: user_code(),
            mac,
            from,
            evidence,
            created_ms: now,
            expires_ms: now + REQUEST_TTL_MS,
            decision,
        };
        flows
            .requests
            .insert(sha256_hex(&device_code), request.clone());
        Ok((device_code, request))
    }

    /// What `POST /token` answers for `device_code`: a token once approved.
    pub fn redeem(&self, device_code: &str, now: i64) -> Result<(String, Mac), &'static str> {
        let key = sha256_hex(device_code);
        let mut flows = self.lock();
        let Some(request) = flows.requests.get(&key) else {
            return Err("expired_token");
        };
        if request.expires_ms <= now {
            flows.requests.remove(&key);
            return Err("expired_token");
        }
        match request.decision.clone() {
            Decision::Pending => Err("authorization_pending"),
            Decision::Denied { .. } => {
                flows.requests.remove(&key);
                Err("access_denied")
            }
            Decision::Approved { .. } => {
                let mac = request.mac;
                flows.requests.remove(&key);
                flows.tokens.retain(|_, (_, until)| *until > now);
                if flows.tokens.len() >= MAX_TOKENS {
                    if let Some(oldest) = flows
                        .tokens
                        .iter()
                        .min_by_key(|(_, (_, until))| *until)
                        .map(|(k, _)| k.clone())
                    {
                        flows.tokens.remove(&oldest);
                    }
                }
                let token = random_secret(32);
                flows
                    .tokens
                    .insert(sha256_hex(&token), (mac, now + TOKEN_TTL_MS));
                Ok((token, mac))
            }
        }
    }

    /// The machine a bearer token opens, if it is one of ours and alive.
    pub fn token_mac(&self, token: &str, now: i64) -> Option<Mac> {
        let flows = self.lock();
        flows
            .tokens
            .get(&sha256_hex(token))
            .filter(|(_, until)| *until > now)
            .map(|(mac, _)| *mac)
    }

    /// The operator's answer to the request with `user_code`.
    pub fn decide(
        &self,
        user_code: &str,
        approve: bool,
        by: &str,
        now: i64,
    ) -> Result<DeviceRequest, FlowError> {
        let code = normalise_code(user_code);
        let mut flows = self.lock();
        let request = flows
            .requests
            .values_mut()
            .find(|r| r.user_code == code && r.expires_ms > now && r.decision == Decision::Pending)
            .ok_or_else(|| FlowError::UnknownCode(code.clone()))?;
        request.decision = if approve {
            Decision::Approved { by: by.into() }
        } else {
            Decision::Denied { by: by.into() }
        };
        Ok(request.clone())
    }

    pub fn arm(&self, scope: ArmScope, minutes: u32, by: &str, now: i64) -> Result<(), FlowError> {
        if minutes == 0 || minutes > MAX_ARM_MINUTES {
            return Err(FlowError::Invalid(format!(
                "an arming window lasts 1 to {MAX_ARM_MINUTES} minutes"
            )));
        }
        let mut flows = self.lock();
        flows.armed.retain(|a| a.until_ms > now && a.scope != scope);
        flows.armed.push(Armed {
            scope,
            until_ms: now + i64::from(minutes) * 60_000,
            by: by.into(),
            used: Vec::new(),
        });
        Ok(())
    }

    pub fn disarm(&self, scope: &ArmScope) {
        self.lock().armed.retain(|a| &a.scope != scope);
    }

    /// Requests still waiting or decided, newest first, and the armings in force.
    pub fn view(&self, now: i64) -> (Vec<DeviceRequest>, Vec<Armed>) {
        let flows = self.lock();
        let mut requests: Vec<DeviceRequest> = flows
            .requests
            .values()
            .filter(|r| r.expires_ms > now)
            .cloned()
            .collect();
        requests.sort_by_key(|r| std::cmp::Reverse(r.created_ms));
        let armed = flows
            .armed
            .iter()
            .filter(|a| a.until_ms > now)
            .cloned()
            .collect();
        (requests, armed)
    }
}

/// Eight letters from an alphabet without vowels or look-alikes, `XXXX-XXXX` (RFC 8628 §6.1).
fn user_code() -> String {
    const ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
    let mut rng = rand::rngs::OsRng;
    let letters: String = (0..8)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect();
    format!("{}-{}", &letters[..4], &letters[4..])
}

/// What an operator typed, as the code is stored: upper case, the dash in place.
pub fn normalise_code(text: &str) -> String {
    let letters: String = text
        .chars()
        .filter(char::is_ascii_alphabetic)
        .map(|c| c.to_ascii_uppercase())
        .take(8)
        .collect();
    if letters.len() == 8 {
        format!("{}-{}", &letters[..4], &letters[4..])
    } else {
        letters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(last: u8) -> Mac {
        Mac([0x52, 0x54, 0x00, 0, 0, last])
    }

    #[test]
    fn a_token_exists_only_after_approval_and_opens_one_machine() {
        let flow = DeviceFlow::default();
        let (code, req) = flow
            .request(mac(1), "lab", None, Evidence::Itself, 0)
            .unwrap();
        assert_eq!(flow.redeem(&code, 1), Err("authorization_pending"));
        assert!(matches!(
            flow.decide("xxxx-xxxx", true, "admin", 1),
            Err(FlowError::UnknownCode(_))
        ));
        flow.decide(&req.user_code.to_lowercase(), true, "admin", 2)
            .unwrap();
        let (token, opened) = flow.redeem(&code, 3).unwrap();
        assert_eq!(opened, mac(1));
        assert_eq!(flow.token_mac(&token, 4), Some(mac(1)));
        assert_eq!(flow.token_mac(&token, 3 + TOKEN_TTL_MS), None);
        assert_eq!(
            flow.redeem(&code, 5),
            Err("expired_token"),
            "one token per approval"
        );
        assert_eq!(flow.token_mac("made-up", 4), None);
    }

    #[test]
    fn denied_and_expired_requests_give_no_token() {
        let flow = DeviceFlow::default();
        let (code, req) = flow
            .request(mac(1), "lab", None, Evidence::Itself, 0)
            .unwrap();
        flow.decide(&req.user_code, false, "admin", 1).unwrap();
        assert_eq!(flow.redeem(&code, 2), Err("access_denied"));
        let (code, _) = flow
            .request(mac(2), "lab", None, Evidence::Itself, 0)
            .unwrap();
        assert_eq!(flow.redeem(&code, REQUEST_TTL_MS), Err("expired_token"));
    }

    #[test]
    fn an_arming_approves_one_install_per_machine_inside_its_window() {
        let flow = DeviceFlow::default();
        flow.arm(ArmScope::Machine(mac(1)), 10, "admin", 0).unwrap();
        let (_, first) = flow
            .request(mac(1), "lab", None, Evidence::Itself, 1)
            .unwrap();
        assert!(matches!(first.decision, Decision::Approved { .. }));
        let (_, second) = flow
            .request(mac(1), "lab", None, Evidence::Itself, 2)
            .unwrap();
        assert_eq!(second.decision, Decision::Pending, "one install per arming");
        flow.arm(ArmScope::Cluster("lab".into()), 1, "admin", 0)
            .unwrap();
        let (_, other) = flow
            .request(mac(2), "other", None, Evidence::Itself, 3)
            .unwrap();
        assert_eq!(other.decision, Decision::Pending, "another cluster");
        let (_, inside) = flow
            .request(mac(4), "lab", None, Evidence::Itself, 59_000)
            .unwrap();
        assert!(matches!(inside.decision, Decision::Approved { .. }));
        let (_, late) = flow
            .request(mac(3), "lab", None, Evidence::Itself, 60_001)
            .unwrap();
        assert_eq!(late.decision, Decision::Pending, "after the window");
        assert!(flow.arm(ArmScope::Machine(mac(1)), 0, "admin", 0).is_err());
    }

    #[test]
    fn strangers_cannot_queue_without_bound() {
        let flow = DeviceFlow::default();
        let from: Option<IpAddr> = Some("10.0.0.66".parse().unwrap());
        for i in 0..MAX_PENDING_PER_ADDRESS {
            flow.request(mac(i as u8), "lab", from, Evidence::Unknown, 0)
                .unwrap();
        }
        assert_eq!(
            flow.request(mac(200), "lab", from, Evidence::Unknown, 0)
                .unwrap_err(),
            FlowError::Busy
        );
        assert!(flow
            .request(mac(201), "lab", None, Evidence::Unknown, 0)
            .is_ok());
    }

    #[test]
    fn a_flood_for_one_mac_gives_way_to_the_machines_own_request() {
        let flow = DeviceFlow::default();
        let victim = mac(7);
        // Strangers fill the MAC's share from several addresses.
        for i in 0..MAX_PENDING_PER_MAC {
            let from: Option<IpAddr> = Some(IpAddr::from([10, 0, 0, 100 + i as u8]));
            flow.request(victim, "lab", from, Evidence::Other(mac(99)), i as i64)
                .unwrap();
        }
        // The machine's own request still gets in; the oldest stranger's went.
        let (_, own) = flow
            .request(victim, "lab", None, Evidence::Itself, 100)
            .unwrap();
        let (pending, _) = flow.view(101);
        assert_eq!(pending.len(), MAX_PENDING_PER_MAC);
        assert!(pending.iter().any(|r| r.user_code == own.user_code));
        assert!(!pending.iter().any(|r| r.created_ms == 0));
    }

    #[test]
    fn an_armed_window_never_approves_a_request_from_another_address() {
        let flow = DeviceFlow::default();
        flow.arm(ArmScope::Cluster("lab".into()), 10, "admin", 0)
            .unwrap();
        for evidence in [Evidence::Unknown, Evidence::Other(mac(9))] {
            let (_, r) = flow.request(mac(1), "lab", None, evidence, 1).unwrap();
            assert_eq!(r.decision, Decision::Pending, "{evidence:?}");
        }
        let (_, r) = flow
            .request(mac(1), "lab", None, Evidence::Itself, 2)
            .unwrap();
        assert!(matches!(r.decision, Decision::Approved { .. }));
    }

    #[test]
    fn user_codes_are_normalised_as_typed() {
        assert_eq!(normalise_code(" bcdf ghjk "), "BCDF-GHJK");
        assert_eq!(normalise_code("bcdf-ghjk"), "BCDF-GHJK");
        let code = user_code();
        assert_eq!(normalise_code(&code), code);
    }
}
