-- Boot assets per Talos version and architecture: where the kernel and initramfs came from, their
-- size and SHA-256, and whether they may be served. The boot URL (/assets/<version>/<file>)
-- names no schematic, so one source (a factory schematic, the release, local files) is in
-- service per version and architecture; adding another one means removing the first.
CREATE TABLE images (
    version          TEXT NOT NULL,
    arch             TEXT NOT NULL CHECK (arch IN ('amd64', 'arm64')),
    source           TEXT NOT NULL CHECK (source IN ('factory', 'release', 'local', 'found')),
    -- the Image Factory schematic ID; '' for every other source
    schematic        TEXT NOT NULL DEFAULT '',
    -- URL downloaded, or the path copied from ('found': the path it was found at)
    kernel_origin    TEXT NOT NULL,
    initramfs_origin TEXT NOT NULL,
    -- known once complete; required for 'ready'
    kernel_size      INTEGER,
    kernel_sha256    TEXT CHECK (kernel_sha256 IS NULL OR length(kernel_sha256) = 64),
    initramfs_size   INTEGER,
    initramfs_sha256 TEXT CHECK (initramfs_sha256 IS NULL OR length(initramfs_sha256) = 64),
    state            TEXT NOT NULL CHECK (state IN ('downloading', 'ready', 'broken')),
    -- why it is broken ('' otherwise)
    reason           TEXT NOT NULL DEFAULT '',
    updated_at       INTEGER NOT NULL,
    PRIMARY KEY (version, arch),
    CHECK (state <> 'ready' OR (kernel_sha256 IS NOT NULL AND initramfs_sha256 IS NOT NULL
                                AND kernel_size IS NOT NULL AND initramfs_size IS NOT NULL))
);
