-- Machine lifecycle, report-in and exactly-once bootstrap per cluster generation.

ALTER TABLE machines ADD COLUMN state TEXT NOT NULL DEFAULT 'discovered'
    CHECK (state IN ('discovered', 'assigned', 'booting', 'config-served', 'installed', 'ready'));
ALTER TABLE machines ADD COLUMN state_since INTEGER;
-- Set when the machine was last sent to its disk; a second network boot soon after, with no
-- sign of life from Talos in between, means the disk is not bootable (wiped).
ALTER TABLE machines ADD COLUMN handoff_at INTEGER;
UPDATE machines SET state = CASE
    WHEN role = 'unassigned' THEN 'discovered'
    WHEN installed = 1 THEN 'installed'
    ELSE 'assigned' END;

ALTER TABLE clusters ADD COLUMN generation INTEGER NOT NULL DEFAULT 1;
ALTER TABLE clusters ADD COLUMN single_controlplane INTEGER NOT NULL DEFAULT 0
    CHECK (single_controlplane IN (0, 1));
ALTER TABLE clusters ADD COLUMN bootstrapped_at INTEGER;

-- One row per cluster generation once a bootstrap target is chosen. The target never changes
-- for that generation; called_at is written before the Bootstrap call goes out.
CREATE TABLE bootstraps (
    cluster_id  INTEGER NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    generation  INTEGER NOT NULL,
    target_mac  TEXT NOT NULL,
    target_ip   TEXT NOT NULL,
    decided_at  INTEGER NOT NULL,
    called_at   INTEGER,
    calls       INTEGER NOT NULL DEFAULT 0,
    outcome     TEXT CHECK (outcome IN ('bootstrapped', 'already-bootstrapped', 'adopted', 'failed')),
    detail      TEXT NOT NULL DEFAULT '',
    finished_at INTEGER,
    PRIMARY KEY (cluster_id, generation)
);

-- The event log's vocabulary grows: rebuild the table with the new CHECK, keeping every row.
CREATE TABLE events_new (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    mac    TEXT NOT NULL,
    at     INTEGER NOT NULL,
    kind   TEXT NOT NULL CHECK (kind IN (
               'discovered', 'dhcp-offer', 'dhcp-ack', 'dhcp-nak', 'dhcp-release',
               'dhcp-decline', 'proxy-offer', 'proxy-ack', 'tftp-served', 'script-served',
               'kernel-fetched', 'initramfs-fetched', 'config-fetched', 'changed',
               'state', 'reported-in', 'bootstrap', 'etcd-member-removed', 'reinstall')),
    detail TEXT NOT NULL DEFAULT ''
);
INSERT INTO events_new (id, mac, at, kind, detail) SELECT id, mac, at, kind, detail FROM events;
DROP TABLE events;
ALTER TABLE events_new RENAME TO events;
CREATE INDEX events_by_mac ON events (mac, id);
