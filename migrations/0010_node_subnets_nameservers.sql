-- Cluster settings for nodes with more than one address and for isolated LANs:
-- node_subnets: NULL = each node's own subnet ("auto"), '' = not written ("none"),
-- else a comma-separated list of CIDRs; nameservers: comma-separated IPv4 addresses,
-- '' = Talos's defaults.
ALTER TABLE clusters ADD COLUMN node_subnets TEXT;
ALTER TABLE clusters ADD COLUMN nameservers TEXT NOT NULL DEFAULT '';

-- What the last `serve` put on the LAN, kept so every surface (the served config, previews,
-- the CLI) applies the same documents and rules: where nodes push their events and kernel
-- log, and the LAN a machine address must fit (subnet, full DHCP's pool as "start-end",
-- the appliance's own addresses, comma-separated).
CREATE TABLE appliance_facts (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    events_endpoint TEXT,
    kernel_log_url TEXT,
    lan_subnet TEXT NOT NULL,
    lan_pool TEXT,
    own_addresses TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
