//! Cluster operations (settings, patches with a preview, downloads, bootstrap status).
