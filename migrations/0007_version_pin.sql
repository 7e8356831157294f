-- Talos version per machine and kernel arguments per boot asset.
-- A machine may pin a Talos version; NULL follows its cluster's version.
ALTER TABLE machines ADD COLUMN talos_version TEXT;
-- Extra kernel arguments an Image Factory schematic bakes in (space-separated; the factory's
-- cmdline minus what bootplane puts on every command line for that version).
ALTER TABLE images ADD COLUMN kernel_args TEXT NOT NULL DEFAULT '';
