//! Prometheus metrics, one registry per running appliance.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AssetLabel {
    pub asset: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabel {
    pub receiver: &'static str,
    pub reason: &'static str,
}

/// Every counter the appliance exports. Cheap to clone: one reference count for all of them.
#[derive(Clone, Debug, Default)]
pub struct Metrics(Arc<Counters>);

impl std::ops::Deref for Metrics {
    type Target = Counters;

    fn deref(&self) -> &Counters {
        &self.0
    }
}

/// What [`Metrics`] holds.
#[derive(Debug, Default)]
pub struct Counters {
    pub dhcp_replies: Family<KindLabel, Counter>,
    pub dhcp_dropped: Family<ReasonLabel, Counter>,
    pub dhcp_leases: Gauge,
    pub tftp_transfers: Family<ResultLabel, Counter>,
    pub tftp_bytes: Counter,
    /// TFTP packets (DATA or OACK) sent again: after silence, or when a windowed client asked
    /// for the window again.
    pub tftp_resent: Counter,
    pub http_bytes: Family<AssetLabel, Counter>,
    /// Asset bytes the kernel sent straight from the page cache (`sendfile`).
    pub http_sendfile_bytes: Counter,
    pub events_dropped: Counter,
    /// Sightings not recorded because they repeated one recorded moments before.
    pub events_repeated: Counter,
    /// Kernel log lines received from nodes and queued for the boot log.
    pub kernel_log_lines: Counter,
    pub kernel_log_dropped: Family<ReasonLabel, Counter>,
    /// Events received on Talos's event sink, by type.
    pub talos_events: Family<KindLabel, Counter>,
    pub talos_events_dropped: Family<ReasonLabel, Counter>,
    pub push_connections_refused: Family<RefusedLabel, Counter>,
    /// Login attempts by outcome: `right`/`wrong` were verified, the rest were refused unchecked.
    pub login_attempts: Family<ResultLabel, Counter>,
    /// HTTP connections open now.
    pub http_connections: Gauge,
    /// HTTP connections closed at once because a cap was reached, by cap.
    pub http_connections_refused: Family<ReasonLabel, Counter>,
}

impl Metrics {
    pub fn dhcp_reply(&self, kind: &'static str) {
        self.dhcp_replies.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn dhcp_drop(&self, reason: &'static str) {
        self.dhcp_dropped
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn http_sent(&self, asset: &'static str, bytes: u64) {
        self.http_bytes
            .get_or_create(&AssetLabel { asset })
            .inc_by(bytes);
    }

    pub fn tftp_done(&self, result: &'static str) {
        self.tftp_transfers
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    pub fn kernel_log_drop(&self, reason: &'static str) {
        self.kernel_log_dropped
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn talos_event(&self, kind: &'static str) {
        self.talos_events.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn talos_event_drop(&self, reason: &'static str) {
        self.talos_events_dropped
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn push_refused(&self, receiver: &'static str, reason: &'static str) {
        self.push_connections_refused
            .get_or_create(&RefusedLabel { receiver, reason })
            .inc();
    }

    pub fn login_attempt(&self, result: &'static str) {
        self.login_attempts
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Renders the OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut registry = Registry::with_prefix("bootplane");
        registry.register(
            "dhcp_replies",
            "DHCP replies sent, by message type",
            self.dhcp_replies.clone(),
        );
        registry.register(
            "dhcp_dropped",
            "DHCP packets dropped without a reply, by reason",
            self.dhcp_dropped.clone(),
        );
        registry.register(
            "dhcp_leases",
            "Addresses currently leased in full-DHCP mode",
            self.dhcp_leases.clone(),
        );
        registry.register(
            "tftp_transfers",
            "TFTP read requests, by result",
            self.tftp_transfers.clone(),
        );
        registry.register(
            "tftp_bytes",
            "Bytes read from files served over TFTP",
            self.tftp_bytes.clone(),
        );
        registry.register(
            "tftp_resent_packets",
            "TFTP DATA and OACK packets sent again (after silence, or a window asked for again)",
            self.tftp_resent.clone(),
        );
        registry.register(
            "http_bytes",
            "Bytes sent over HTTP, by asset kind",
            self.http_bytes.clone(),
        );
        registry.register(
            "http_sendfile_bytes",
            "Boot asset bytes sent over HTTP straight from the page cache (sendfile)",
            self.http_sendfile_bytes.clone(),
        );
        registry.register(
            "events_repeated",
            "Machine sightings not recorded because they repeated the last one within 5 s",
            self.events_repeated.clone(),
        );
        registry.register(
            "events_dropped",
            "Machine events dropped because the database writer fell behind",
            self.events_dropped.clone(),
        );
        registry.register(
            "kernel_log_lines",
            "Kernel log lines received from nodes and queued for their boot log",
            self.kernel_log_lines.clone(),
        );
        registry.register(
            "kernel_log_dropped",
            "Kernel log lines dropped, by reason",
            self.kernel_log_dropped.clone(),
        );
        registry.register(
            "talos_events",
            "Events received on Talos's event sink, by type",
            self.talos_events.clone(),
        );
        registry.register(
            "talos_events_dropped",
            "Events on Talos's event sink that were ignored, by reason",
            self.talos_events_dropped.clone(),
        );
        registry.register(
            "push_connections_refused",
            "Connections to the event sink or kernel log receiver closed at once, by reason",
            self.push_connections_refused.clone(),
        );
        registry.register(
            "login_attempts",
            "Logins by outcome: right and wrong passwords were verified; limited, busy and bad_username were refused before any check",
            self.login_attempts.clone(),
        );
        registry.register(
            "http_connections",
            "HTTP connections open now",
            self.http_connections.clone(),
        );
        registry.register(
            "http_connections_refused",
            "HTTP connections closed at once because a cap was reached (total or per_address)",
            self.http_connections_refused.clone(),
        );
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}
