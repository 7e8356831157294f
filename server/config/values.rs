//! The value types of settings, shared by the command line and the file: modes, ports that
//! may be `off`, address pools, secrets kept out of logs, Talos versions.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::Deserialize;

use crate::model::EfiBinary;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DhcpMode {
    /// Answer only netboot clients, beside the site's DHCP server (no addresses handed out).
    Proxy,
    /// Be the segment's DHCP server: static addresses for known machines, an optional pool.
    Full,
    /// No DHCP at all (the site's DHCP server points machines at bootplane).
    Off,
}

impl fmt::Display for DhcpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DhcpMode::Proxy => "proxy",
            DhcpMode::Full => "full",
            DhcpMode::Off => "off",
        })
    }
}

/// Who may fetch a machine's config (it carries every cluster secret).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ConfigAccess {
    /// Only a requester whose address bootplane leased to that MAC, or whose entry in the
    /// host's neighbour (ARP) table is that MAC.
    Mac,
    /// Anyone who can reach the HTTP port and knows the MAC.
    Any,
    /// Only a bearer token bootplane issued for that machine through the OAuth2 device flow
    /// Talos speaks (`talos.config.oauth.*`): an operator approves the code the machine shows,
    /// or an armed window approves one install. Rests on nothing the LAN says.
    Oauth,
}

/// Whether to answer IPv6 router solicitations (see `ra`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RaMode {
    /// On in full DHCP mode, off otherwise.
    Auto,
    On,
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A TCP port, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortSetting {
    Off,
    Port(u16),
}

impl PortSetting {
    pub fn port(self) -> Option<u16> {
        match self {
            PortSetting::Off => None,
            PortSetting::Port(p) => Some(p),
        }
    }
}

impl FromStr for PortSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "off" => Ok(PortSetting::Off),
            text => match text.parse::<u16>() {
                Ok(0) | Err(_) => Err(format!("'{s}' is neither a port (1-65535) nor 'off'")),
                Ok(p) => Ok(PortSetting::Port(p)),
            },
        }
    }
}

impl<'de> Deserialize<'de> for PortSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Number(n) => n.to_string(),
            Raw::Text(t) => t,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A `START-END` range of IPv4 addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
}

impl Pool {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (u32::from(self.start)..=u32::from(self.end)).contains(&u32::from(ip))
    }

    pub fn len(&self) -> u32 {
        u32::from(self.end) - u32::from(self.start) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

impl FromStr for Pool {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("'{s}' is not a range like 192.168.1.100-192.168.1.199"))?;
        let start: Ipv4Addr = a
            .trim()
            .parse()
            .map_err(|_| format!("'{a}' is not an IPv4 address"))?;
        let end: Ipv4Addr = b
            .trim()
            .parse()
            .map_err(|_| format!("'{b}' is not an IPv4 address"))?;
        if u32::from(end) < u32::from(start) {
            return Err(format!("pool '{s}' ends before it starts"));
        }
        Ok(Pool { start, end })
    }
}

impl<'de> Deserialize<'de> for Pool {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A secret setting: kept out of `Debug` output and logs.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(Secret(s.to_string()))
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// `EfiBinary` as a clap/serde value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EfiBinaryArg(pub EfiBinary);

impl FromStr for EfiBinaryArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse().map(EfiBinaryArg)
    }
}

impl<'de> Deserialize<'de> for EfiBinaryArg {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        EfiBinary::deserialize(d).map(EfiBinaryArg)
    }
}

/// A Talos version as `vX.Y.Z`; rejects anything that could escape a directory.
pub fn validate_talos_version(v: &str) -> Result<(), String> {
    let rest = v
        .strip_prefix('v')
        .ok_or_else(|| format!("Talos version '{v}' must look like v1.11.6"))?;
    let (core, pre) = match rest.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (rest, None),
    };
    let parts: Vec<&str> = core.split('.').collect();
    let numeric = parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
    let pre_ok = pre
        .is_none_or(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '.'));
    if numeric && pre_ok {
        Ok(())
    } else {
        Err(format!("Talos version '{v}' must look like v1.11.6"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn talos_versions() {
        for ok in ["v1.11.6", "v1.12.0-beta.1", "v10.0.0"] {
            assert!(validate_talos_version(ok).is_ok(), "{ok}");
        }
        for bad in ["1.11.6", "v1.11", "v1.11.6/..", "v1..6", "v1.11.6-", ""] {
            assert!(validate_talos_version(bad).is_err(), "{bad}");
        }
    }
}
