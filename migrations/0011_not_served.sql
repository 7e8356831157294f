-- A netboot client bootplane sees but cannot serve (an arm64 machine with no arm64 iPXE build,
-- an architecture it has no boot file for) is recorded too, with why: rebuild the event log
-- with the new kind in its CHECK, keeping every row.
CREATE TABLE events_new (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    mac    TEXT NOT NULL,
    at     INTEGER NOT NULL,
    kind   TEXT NOT NULL CHECK (kind IN (
               'discovered', 'dhcp-offer', 'dhcp-ack', 'dhcp-nak', 'dhcp-release',
               'dhcp-decline', 'proxy-offer', 'proxy-ack', 'tftp-served', 'script-served',
               'kernel-fetched', 'initramfs-fetched', 'config-fetched', 'changed',
               'state', 'reported-in', 'bootstrap', 'etcd-member-removed', 'reinstall',
               'talos-event', 'not-served')),
    detail TEXT NOT NULL DEFAULT ''
);
INSERT INTO events_new (id, mac, at, kind, detail) SELECT id, mac, at, kind, detail FROM events;
DROP TABLE events;
ALTER TABLE events_new RENAME TO events;
CREATE INDEX events_by_mac ON events (mac, id);
