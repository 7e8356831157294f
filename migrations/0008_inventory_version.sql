-- A counter of changes to what the in-memory inventory holds (machines and their cluster names),
-- bumped by triggers in the writing transaction. The inventory watcher polls it and reloads
-- only when it moved: event, lease, boot-log and image writes, and the last-seen stamps each
-- observation updates, no longer cause full reloads during a boot storm.
CREATE TABLE inventory_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO inventory_version (id, version) VALUES (1, 0);

CREATE TRIGGER inventory_version_machine_insert AFTER INSERT ON machines
BEGIN
    UPDATE inventory_version SET version = version + 1 WHERE id = 1;
END;

CREATE TRIGGER inventory_version_machine_delete AFTER DELETE ON machines
BEGIN
    UPDATE inventory_version SET version = version + 1 WHERE id = 1;
END;

-- Operator fields and the lifecycle: any statement that sets one of them counts (a statement
-- that sets a column added later sets some of these too). first_seen and last_seen are left
-- out on purpose: every observation stamps them.
CREATE TRIGGER inventory_version_machine_fields AFTER UPDATE OF
    mac, cluster_id, role, hostname, ip, prefix, gateway, dns, install_disk, disk_handoff,
    efi_binary, installed, wipe, state, state_since, handoff_at
ON machines
BEGIN
    UPDATE inventory_version SET version = version + 1 WHERE id = 1;
END;

-- Facts observations fill in (COALESCE keeps the old value): count only real changes.
CREATE TRIGGER inventory_version_machine_facts AFTER UPDATE OF last_arch, smbios_uuid, serial
ON machines
WHEN old.last_arch IS NOT new.last_arch
    OR old.smbios_uuid IS NOT new.smbios_uuid
    OR old.serial IS NOT new.serial
BEGIN
    UPDATE inventory_version SET version = version + 1 WHERE id = 1;
END;

CREATE TRIGGER inventory_version_cluster_name AFTER UPDATE OF name ON clusters
BEGIN
    UPDATE inventory_version SET version = version + 1 WHERE id = 1;
END;
