-- A machine may run Talos from the network at every boot, never installed (Talos 1.14 on,
-- workers only): its config has no install document and its network boots always get Talos.
ALTER TABLE machines ADD COLUMN diskless INTEGER NOT NULL DEFAULT 0 CHECK (diskless IN (0, 1));

CREATE TRIGGER inventory_version_machine_diskless AFTER UPDATE OF diskless ON machines
BEGIN
    UPDATE inventory_version SET version = version + 1 WHERE id = 1;
END;
