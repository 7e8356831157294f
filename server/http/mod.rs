//! HTTP serving machinery with no boot or operator knowledge: the listener with its connection
//! caps and `sendfile` for asset chunks (`zerocopy`), ranged and conditional file responses from
//! verified open files (`files`), and the hyper loop that serves a router (`serve`).

pub mod files;
pub mod serve;
pub mod zerocopy;
