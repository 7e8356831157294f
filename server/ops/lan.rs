//! The LAN rules a machine's static address follows: the subnet bootplane serves, full mode's
//! dynamic pool, the appliance's own addresses.

use std::net::Ipv4Addr;

use crate::config::Pool;
use crate::model::Ipv4Cidr;

/// The LAN rules a static address must follow.
#[derive(Clone, Debug)]
pub struct Lan {
    /// The subnet bootplane serves (full mode) or sits on (proxy mode).
    pub subnet: Ipv4Cidr,
    /// Full mode's dynamic pool: static addresses must stay out of it.
    pub pool: Option<Pool>,
    /// The appliance's own addresses (the one it advertises, its interface's): no machine
    /// may be given one.
    pub appliance: Vec<Ipv4Addr>,
    /// What `serve` adds to every kernel command line, and the Talos version a machine boots
    /// without a pin or a cluster version: a machine's whole command line is checked with them.
    pub kernel: crate::talos::kernel::Additions,
    pub default_version: String,
}

impl Lan {
    pub fn from_config(config: &crate::config::Config) -> Lan {
        Lan {
            kernel: config.boot.kernel_additions(),
            default_version: config.boot.talos_version.clone(),
            ..Lan::from_facts(&Lan::facts(config))
        }
    }

    /// What `serve` records so the CLI applies the same rules (`Db::lan_facts`).
    pub fn facts(config: &crate::config::Config) -> crate::model::LanFacts {
        let pool = match config.dhcp.mode {
            crate::config::DhcpMode::Full => config.dhcp.pool,
            _ => None,
        };
        let mut own = vec![config.boot.advertise_ip, config.interface.cidr.addr];
        own.dedup();
        crate::model::LanFacts {
            subnet: config.dhcp.subnet,
            pool: pool.map(|p| (p.start, p.end)),
            own,
        }
    }

    /// The LAN the last `serve` recorded, for the CLI: it counts the offline kernel additions
    /// and the default Talos version, as it does not know `serve`'s flags.
    pub fn from_facts(facts: &crate::model::LanFacts) -> Lan {
        Lan {
            subnet: facts.subnet,
            pool: facts.pool.map(|(start, end)| Pool { start, end }),
            appliance: facts.own.clone(),
            kernel: crate::talos::kernel::Additions::offline(),
            default_version: crate::config::DEFAULT_TALOS_VERSION.to_string(),
        }
    }
}
