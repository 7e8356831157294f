-- A machine's boot script names its cluster's Talos version (when the machine has no pin), and
-- `serve` reuses a rendered script while the inventory snapshot it was made from is current: a
-- cluster's version changed by another process (the CLI) moves the inventory version too, so
-- the running appliance reloads and renders again.
CREATE TRIGGER inventory_version_cluster_talos_version AFTER UPDATE OF talos_version ON clusters
BEGIN
    UPDATE inventory_version SET version = version + 1 WHERE id = 1;
END;
