//! TFTP: read-only service of the iPXE binaries, from memory.
//!
//! Only plain file names inside the iPXE directory are reachable (optionally behind a
//! `<mac>/` prefix, as some setups request them). Anything else, and `autoexec.ipxe`, is
//! answered at once with "file not found". Writes are refused.
//!
//! The protocol is RFC 1350 with the blksize (2348), tsize and timeout (2349) and windowsize
//! (7440) options, read requests only: one task per transfer on its own socket, connected to
//! the client, sending packets cut from the file's bytes in memory and waiting on tokio's
//! timers (no thread hand-off per packet).
//!
//! `server` is the listener (one task per transfer, the limits on transfers in flight),
//! `transfer` one transfer (what it reports, the windows sent and acknowledged), `wire` the
//! packets and the options negotiation, `files` the iPXE file set and its symbolic link rules.

mod files;
mod server;
mod transfer;
pub(crate) mod wire;

use std::io;

pub use files::{resolve_request, IpxeFiles};
pub use server::{
    run, MAX_TRANSFERS, MAX_TRANSFERS_PER_ADDRESS, RETRANSMIT_AFTER, SILENT_GIVES_WAY,
};
pub use transfer::TftpHandler;
pub use wire::MAX_TIMEOUT;

#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    #[error("tftp server socket: {0}")]
    Socket(#[from] io::Error),
}
