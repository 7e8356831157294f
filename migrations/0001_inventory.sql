-- Inventory, event log and DHCP leases.

CREATE TABLE clusters (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

INSERT INTO clusters (name, created_at) VALUES ('default', CAST(strftime('%s', 'now') AS INTEGER) * 1000);

CREATE TABLE machines (
    mac          TEXT PRIMARY KEY CHECK (length(mac) = 17 AND mac = lower(mac)),
    cluster_id   INTEGER NOT NULL REFERENCES clusters(id),
    role         TEXT NOT NULL DEFAULT 'unassigned'
                 CHECK (role IN ('unassigned', 'controlplane', 'worker')),
    hostname     TEXT UNIQUE,
    ip           TEXT UNIQUE,
    prefix       INTEGER CHECK (prefix BETWEEN 0 AND 32),
    gateway      TEXT,
    dns          TEXT NOT NULL DEFAULT '',
    install_disk TEXT,
    disk_handoff TEXT NOT NULL DEFAULT 'exit'
                 CHECK (disk_handoff IN ('exit', 'http-404', 'sanboot')),
    efi_binary   TEXT CHECK (efi_binary IN ('ipxe.efi', 'snponly.efi')),
    installed    INTEGER NOT NULL DEFAULT 0 CHECK (installed IN (0, 1)),
    first_seen   INTEGER,
    last_seen    INTEGER,
    last_arch    INTEGER,
    smbios_uuid  TEXT,
    serial       TEXT,
    CHECK ((ip IS NULL) = (prefix IS NULL))
);

CREATE TABLE events (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    mac    TEXT NOT NULL,
    at     INTEGER NOT NULL,
    kind   TEXT NOT NULL CHECK (kind IN (
               'discovered', 'dhcp-offer', 'dhcp-ack', 'dhcp-nak', 'dhcp-release',
               'dhcp-decline', 'proxy-offer', 'proxy-ack', 'tftp-served', 'script-served',
               'kernel-fetched', 'initramfs-fetched', 'config-fetched', 'changed')),
    detail TEXT NOT NULL DEFAULT ''
);

CREATE INDEX events_by_mac ON events (mac, id);

-- Addresses handed out in full-DHCP mode, static and dynamic, so they survive restarts.
CREATE TABLE leases (
    mac        TEXT PRIMARY KEY CHECK (length(mac) = 17),
    ip         TEXT NOT NULL UNIQUE,
    expires_at INTEGER NOT NULL,
    hostname   TEXT
);

-- Addresses a client DECLINEd (in use by someone else); kept out of the pool until then.
CREATE TABLE declined (
    ip          TEXT PRIMARY KEY,
    until       INTEGER NOT NULL
);
