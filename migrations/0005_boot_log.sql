-- Pushed reports from Talos nodes: events from the event sink (`talos.events.sink=`) join the
-- event log, kernel messages (`talos.logging.kernel=`) go to a bounded per-machine boot log.

-- The event log's vocabulary grows: rebuild the table with the new CHECK, keeping every row.
CREATE TABLE events_new (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    mac    TEXT NOT NULL,
    at     INTEGER NOT NULL,
    kind   TEXT NOT NULL CHECK (kind IN (
               'discovered', 'dhcp-offer', 'dhcp-ack', 'dhcp-nak', 'dhcp-release',
               'dhcp-decline', 'proxy-offer', 'proxy-ack', 'tftp-served', 'script-served',
               'kernel-fetched', 'initramfs-fetched', 'config-fetched', 'changed',
               'state', 'reported-in', 'bootstrap', 'etcd-member-removed', 'reinstall',
               'talos-event')),
    detail TEXT NOT NULL DEFAULT ''
);
INSERT INTO events_new (id, mac, at, kind, detail) SELECT id, mac, at, kind, detail FROM events;
DROP TABLE events;
ALTER TABLE events_new RENAME TO events;
CREATE INDEX events_by_mac ON events (mac, id);

-- Kernel messages per machine, oldest trimmed first (the writer keeps the newest N per MAC).
-- Unlike the event log this is a ring: trimming it is its purpose.
CREATE TABLE boot_log (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    mac        TEXT NOT NULL CHECK (length(mac) = 17 AND mac = lower(mac)),
    at         INTEGER NOT NULL,
    talos_time TEXT,
    facility   TEXT,
    priority   TEXT,
    seq        INTEGER,
    clock      INTEGER,
    msg        TEXT NOT NULL
);
CREATE INDEX boot_log_by_mac ON boot_log (mac, id);
