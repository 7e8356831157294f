-- A counter of changes to what a machine config is rendered from besides the machine itself:
-- the clusters (settings and secrets bundles), their patches, the boot asset records (a factory
-- schematic's host and ID) and the appliance facts (where nodes report). Bumped by triggers in
-- the writing transaction, whichever process writes, so `serve` keeps a cluster's parsed
-- materials while the counter stands and loads them again when it moved.
CREATE TABLE materials_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO materials_version (id, version) VALUES (1, 0);

CREATE TRIGGER materials_version_cluster_insert AFTER INSERT ON clusters
BEGIN UPDATE materials_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER materials_version_cluster_update AFTER UPDATE ON clusters
BEGIN UPDATE materials_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER materials_version_cluster_delete AFTER DELETE ON clusters
BEGIN UPDATE materials_version SET version = version + 1 WHERE id = 1; END;

CREATE TRIGGER materials_version_patch_insert AFTER INSERT ON patches
BEGIN UPDATE materials_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER materials_version_patch_update AFTER UPDATE ON patches
BEGIN UPDATE materials_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER materials_version_patch_delete AFTER DELETE ON patches
BEGIN UPDATE materials_version SET version = version + 1 WHERE id = 1; END;

CREATE TRIGGER materials_version_image_insert AFTER INSERT ON images
BEGIN UPDATE materials_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER materials_version_image_update AFTER UPDATE ON images
BEGIN UPDATE materials_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER materials_version_image_delete AFTER DELETE ON images
BEGIN UPDATE materials_version SET version = version + 1 WHERE id = 1; END;

CREATE TRIGGER materials_version_facts_insert AFTER INSERT ON appliance_facts
BEGIN UPDATE materials_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER materials_version_facts_update AFTER UPDATE ON appliance_facts
BEGIN UPDATE materials_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER materials_version_facts_delete AFTER DELETE ON appliance_facts
BEGIN UPDATE materials_version SET version = version + 1 WHERE id = 1; END;
