-- Cluster settings for nodes with more than one address and for isolated LANs:
-- node_subnets: NULL = each node's own subnet ("auto"), '' = not written ("none"),
-- else a comma-separated list of CIDRs; nameservers: comma-separated IPv4 addresses,
-- '' = Talos's defaults.
ALTER TABLE clusters ADD COLUMN node_subnets TEXT;
ALTER TABLE clusters ADD COLUMN nameservers TEXT NOT NULL DEFAULT '';

-- Where nodes push their events and kernel log (what `serve` advertises), kept so every
-- render of a config (the served one, previews, the CLI) carries the same documents.
CREATE TABLE report_targets (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    events_endpoint TEXT,
    kernel_log_url TEXT,
    updated_at INTEGER NOT NULL
);
