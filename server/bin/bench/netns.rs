//! The bench's private network: a server and a client network namespace joined by a veth pair.
//!
//! Names carry the pid of the bench process that made them, so parallel runs never clash, and
//! a later run removes namespaces left by a bench that was killed. Every server under test runs
//! in the server namespace (`ip netns exec`), the load generators in the client namespace, so
//! no packet of the bench leaves these two namespaces.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// The server's address on the veth; the subnet is 10.99.0.0/16.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
/// The load generators' own address.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
pub const PREFIX: u8 = 16;
/// Name prefix of every namespace the bench creates.
const NS_PREFIX: &str = "bpbench-";

/// The namespace and interface names of one bench run.
#[derive(Debug, Clone)]
pub struct Names {
    /// The pid of the bench process that made them.
    pub id: u32,
    pub server_ns: String,
    pub client_ns: String,
    pub server_if: String,
    pub client_if: String,
}

impl Names {
    /// The names for the run of bench process `id` (interface names fit IFNAMSIZ).
    pub fn for_id(id: u32) -> Self {
        Self {
            id,
            server_ns: format!("{NS_PREFIX}{id}-srv"),
            client_ns: format!("{NS_PREFIX}{id}-cli"),
            server_if: format!("bpb{id}s"),
            client_if: format!("bpb{id}c"),
        }
    }

    /// `ip netns exec <server namespace> program`: a command that runs in the server namespace.
    pub fn in_server(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.server_ns]).arg(program);
        cmd
    }

    /// The same in the client namespace.
    pub fn in_client(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.client_ns]).arg(program);
        cmd
    }

    /// Adds `addrs` (each /16) to the client's veth in one `ip -batch` call.
    pub fn add_client_addresses(&self, addrs: &[Ipv4Addr]) -> Result<()> {
        let script: String = addrs
            .iter()
            .map(|a| format!("addr replace {a}/{PREFIX} dev {}\n", self.client_if))
            .collect();
        ip_batch(&self.client_ns, &script)
    }
}

/// The namespaces of this run; deleted (with the veth pair) when dropped.
#[derive(Debug)]
pub struct Netns {
    pub names: Names,
}

impl Netns {
    /// Creates both namespaces and the veth pair, addresses and links up.
    pub fn create(id: u32) -> Result<Self> {
        remove_stale();
        let names = Names::for_id(id);
        let netns = Self {
            names: names.clone(),
        };
        ip(&["netns", "add", &names.server_ns])?;
        ip(&["netns", "add", &names.client_ns])?;
        ip(&[
            "link",
            "add",
            &names.server_if,
            "netns",
            &names.server_ns,
            "type",
            "veth",
            "peer",
            "name",
            &names.client_if,
            "netns",
            &names.client_ns,
        ])?;
        for (ns, dev, addr) in [
            (&names.server_ns, &names.server_if, SERVER_IP),
            (&names.client_ns, &names.client_if, CLIENT_IP),
        ] {
            ip_batch(
                ns,
                &format!("link set lo up\naddr add {addr}/{PREFIX} dev {dev}\nlink set {dev} up\n"),
            )?;
        }
        // Off-link traffic has nowhere to go: no default route in either namespace.
        Ok(netns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth, and with it the pair.
        for ns in [&self.names.server_ns, &self.names.client_ns] {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Deletes namespaces left behind by bench processes that no longer run.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let alive = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| comm.trim().starts_with("bootplane-ben"));
        if !alive {
            eprintln!("removing the stale namespace {name} of an earlier bench run");
            let _ = ip(&["netns", "del", name]);
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ip_batch(ns: &str, script: &str) -> Result<()> {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip -batch")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ip -n {ns} -batch failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_fit_ifnamsiz() {
        let n = Names::for_id(4_194_304);
        assert!(n.server_if.len() <= 15 && n.client_if.len() <= 15);
        assert_ne!(n.server_ns, n.client_ns);
    }
}
