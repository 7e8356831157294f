-- Cluster materials: settings, the secrets bundle and config patches.

ALTER TABLE clusters ADD COLUMN endpoint TEXT;
ALTER TABLE clusters ADD COLUMN vip TEXT;
ALTER TABLE clusters ADD COLUMN talos_version TEXT;
ALTER TABLE clusters ADD COLUMN kubernetes_version TEXT;
ALTER TABLE clusters ADD COLUMN install_image TEXT;
ALTER TABLE clusters ADD COLUMN pod_subnets TEXT NOT NULL DEFAULT '10.244.0.0/16';
ALTER TABLE clusters ADD COLUMN service_subnets TEXT NOT NULL DEFAULT '10.96.0.0/12';
ALTER TABLE clusters ADD COLUMN dns_domain TEXT NOT NULL DEFAULT 'cluster.local';
-- talosctl's secrets.yaml format; NULL until `cluster init`.
ALTER TABLE clusters ADD COLUMN secrets TEXT;
ALTER TABLE clusters ADD COLUMN initialised_at INTEGER;

ALTER TABLE machines ADD COLUMN wipe INTEGER NOT NULL DEFAULT 0 CHECK (wipe IN (0, 1));

-- Config patches, applied in order cluster -> role -> machine, then by position.
CREATE TABLE patches (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    cluster_id INTEGER NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    scope      TEXT NOT NULL CHECK (scope IN ('cluster', 'controlplane', 'worker', 'machine')),
    mac        TEXT CHECK ((scope = 'machine') = (mac IS NOT NULL)),
    position   INTEGER NOT NULL,
    name       TEXT NOT NULL,
    body       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (cluster_id, scope, mac, name)
);

CREATE INDEX patches_by_scope ON patches (cluster_id, scope, mac, position);
