//! Talos's event sink: nodes booted with `talos.events.sink=<ip>:<port>` publish their
//! machined events here (gRPC over plaintext HTTP/2, one unary `events.EventSinkService/Publish`
//! call per event, wire format in `proto/events.proto`).
//!
//! The sink is unauthenticated, so what it hears is news, never evidence: the events that say
//! something about a machine's way into the cluster (its stage and readiness, sequences,
//! services, config errors) join the machine's event log, and each of them asks the
//! orchestrator to probe the node's Talos API now (`Signal::SignOfLife`). Only the probe's
//! mTLS-authenticated answer marks a machine installed or ready. Phase and task events are
//! decoded and counted but not logged (dozens per boot, no news for the operator).
//!
//! Every event is acknowledged, even one that is ignored: Talos retries a failed `Publish`
//! from the same event forever, so refusing one would stall the node's stream.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status};

use super::peers::{self, ConnLimits, ConnPermit};
use crate::inventory::{Inventory, Neighbours, Recorder};
use crate::model::{EventKind, Mac};
use crate::orchestrator::{self, Signal};
use crate::support::metrics::Metrics;
use crate::talos::api::pb::events::event_sink_service_server::{
    EventSinkService, EventSinkServiceServer,
};
use crate::talos::api::pb::events::{EventRequest, EventResponse};
use crate::talos::api::pb::machine as m;

/// Connections held at most, in all and per peer address.
const MAX_CONNECTIONS: usize = 256;
const MAX_PER_PEER: usize = 4;
/// A connection that sends nothing this long after it opens is closed.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest event accepted (Talos's are a few hundred bytes).
const MAX_MESSAGE: usize = 64 * 1024;
/// Longest text kept from a node-supplied string in an event's detail.
const MAX_TEXT: usize = 300;
/// Machines × (status + services) remembered for de-duplication at most.
const MAX_TOPICS: usize = 16_384;

/// What the sink needs from the rest of the appliance.
#[derive(Clone, Debug)]
pub struct SinkDeps {
    pub inventory: Inventory,
    pub neighbours: Neighbours,
    pub recorder: Recorder,
    pub orchestrator: orchestrator::Handle,
    pub metrics: Metrics,
}

/// What one event says, decoded from its `Any` payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeNews {
    Status {
        stage: &'static str,
        ready: bool,
        unmet: Vec<String>,
    },
    Sequence {
        sequence: String,
        action: &'static str,
        error: Option<String>,
    },
    Phase {
        phase: String,
        action: &'static str,
    },
    Task {
        task: String,
        action: &'static str,
    },
    Service {
        service: String,
        action: &'static str,
        message: String,
    },
    ConfigError {
        what: &'static str,
        error: String,
    },
    /// A type bootplane does not read (addresses, restarts, newer kinds).
    Other(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("event carries no payload")]
    Empty,
    #[error("cannot decode {type_url}: {source}")]
    Decode {
        type_url: String,
        source: prost::DecodeError,
    },
}

impl NodeNews {
    /// Decodes a Talos event payload by its type URL (`type.googleapis.com/machine.X`).
    pub fn decode(data: Option<&prost_types::Any>) -> Result<NodeNews, SinkError> {
        let data = data.ok_or(SinkError::Empty)?;
        let name = data.type_url.rsplit('/').next().unwrap_or_default();
        let bytes = data.value.as_slice();
        let failed = |source| SinkError::Decode {
            type_url: clean(&data.type_url),
            source,
        };
        Ok(match name {
            "machine.MachineStatusEvent" => {
                let e = m::MachineStatusEvent::decode(bytes).map_err(failed)?;
                let status = e.status.unwrap_or_default();
                NodeNews::Status {
                    stage: stage_name(e.stage),
                    ready: status.ready,
                    unmet: status
                        .unmet_conditions
                        .iter()
                        .map(|c| clean(&c.name))
                        .collect(),
                }
            }
            "machine.SequenceEvent" => {
                let e = m::SequenceEvent::decode(bytes).map_err(failed)?;
                let action = match m::sequence_event::Action::try_from(e.action) {
                    Ok(m::sequence_event::Action::Start) => "started",
                    Ok(m::sequence_event::Action::Stop) => "finished",
                    _ => "noop",
                };
                NodeNews::Sequence {
                    sequence: clean(&e.sequence),
                    action,
                    error: e.error.map(|err| clean(&err.message)),
                }
            }
            "machine.PhaseEvent" => {
                let e = m::PhaseEvent::decode(bytes).map_err(failed)?;
                NodeNews::Phase {
                    phase: clean(&e.phase),
                    action: if e.action == m::phase_event::Action::Stop as i32 {
                        "finished"
                    } else {
                        "started"
                    },
                }
            }
            "machine.TaskEvent" => {
                let e = m::TaskEvent::decode(bytes).map_err(failed)?;
                NodeNews::Task {
                    task: clean(&e.task),
                    action: if e.action == m::task_event::Action::Stop as i32 {
                        "finished"
                    } else {
                        "started"
                    },
                }
            }
            "machine.ServiceStateEvent" => {
                let e = m::ServiceStateEvent::decode(bytes).map_err(failed)?;
                use m::service_state_event::Action as A;
                let action = match A::try_from(e.action) {
                    Ok(A::Initialized) => "initialized",
                    Ok(A::Preparing) => "preparing",
                    Ok(A::Waiting) => "waiting",
                    Ok(A::Running) => "running",
                    Ok(A::Stopping) => "stopping",
                    Ok(A::Finished) => "finished",
                    Ok(A::Failed) => "failed",
                    Ok(A::Skipped) => "skipped",
                    Ok(A::Starting) => "starting",
                    Err(_) => "unknown",
                };
                NodeNews::Service {
                    service: clean(&e.service),
                    action,
                    message: clean(&e.message),
                }
            }
            "machine.ConfigLoadErrorEvent" => NodeNews::ConfigError {
                what: "load",
                error: clean(
                    &m::ConfigLoadErrorEvent::decode(bytes)
                        .map_err(failed)?
                        .error,
                ),
            },
            "machine.ConfigValidationErrorEvent" => NodeNews::ConfigError {
                what: "validation",
                error: clean(
                    &m::ConfigValidationErrorEvent::decode(bytes)
                        .map_err(failed)?
                        .error,
                ),
            },
            other => NodeNews::Other(clean(other)),
        })
    }

    /// The metrics label of this kind of event.
    pub fn kind(&self) -> &'static str {
        match self {
            NodeNews::Status { .. } => "machine-status",
            NodeNews::Sequence { .. } => "sequence",
            NodeNews::Phase { .. } => "phase",
            NodeNews::Task { .. } => "task",
            NodeNews::Service { .. } => "service",
            NodeNews::ConfigError { .. } => "config-error",
            NodeNews::Other(_) => "other",
        }
    }

    /// The event log line for news worth logging; `None` for the rest.
    pub fn summary(&self) -> Option<String> {
        match self {
            NodeNews::Status {
                stage,
                ready,
                unmet,
            } => Some(if *ready {
                format!("talos: stage {stage}, ready")
            } else if unmet.is_empty() {
                format!("talos: stage {stage}, not ready")
            } else {
                format!("talos: stage {stage}, not ready ({})", unmet.join(", "))
            }),
            NodeNews::Sequence {
                sequence,
                action,
                error,
            } => Some(match error {
                Some(error) => format!("talos: sequence {sequence} failed: {error}"),
                None => format!("talos: sequence {sequence} {action}"),
            }),
            NodeNews::Service {
                service,
                action: action @ ("running" | "failed"),
                message,
            } => Some(if message.is_empty() {
                format!("talos: service {service} {action}")
            } else {
                format!("talos: service {service} {action}: {message}")
            }),
            NodeNews::ConfigError { what, error } => {
                Some(format!("talos: config {what} error: {error}"))
            }
            _ => None,
        }
    }
}

fn stage_name(stage: i32) -> &'static str {
    use m::machine_status_event::MachineStage as S;
    match S::try_from(stage) {
        Ok(S::Booting) => "booting",
        Ok(S::Installing) => "installing",
        Ok(S::Maintenance) => "maintenance",
        Ok(S::Running) => "running",
        Ok(S::Rebooting) => "rebooting",
        Ok(S::ShuttingDown) => "shutting down",
        Ok(S::Resetting) => "resetting",
        Ok(S::Upgrading) => "upgrading",
        Ok(S::Unknown) | Err(_) => "unknown",
    }
}

/// Node-supplied text, bounded and without control characters (it reaches terminals).
fn clean(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_TEXT)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(MAX_TEXT).is_some() {
        out.push('…');
    }
    out
}

/// The peer of a connection, as the gRPC handler sees it.
#[derive(Clone, Debug)]
pub struct SinkPeer {
    pub addr: SocketAddr,
    /// The peer's neighbour-table entry, looked up when it connected.
    pub arp: Option<Mac>,
}

struct Sink {
    deps: SinkDeps,
    /// The last line logged per machine for its status and for each of its services: news
    /// repeated (a health check flapping back to the same state) is not logged again.
    last: Mutex<HashMap<(Mac, String), String>>,
}

impl Sink {
    fn receive(&self, peer: Option<&SinkPeer>, event: &EventRequest) {
        let deps = &self.deps;
        let Some(peer) = peer else {
            deps.metrics.talos_event_drop("unknown-peer");
            return;
        };
        let Some(mac) = peers::attribute(
            &deps.inventory,
            &deps.neighbours,
            peer.addr.ip(),
            peer.arp,
            deps.recorder.now_ms(),
        ) else {
            deps.metrics.talos_event_drop("unknown-peer");
            tracing::debug!(peer = %peer.addr, "talos event from a peer that is no known machine; ignored");
            return;
        };
        let news = match NodeNews::decode(event.data.as_ref()) {
            Ok(news) => news,
            Err(e) => {
                deps.metrics.talos_event_drop("undecodable");
                tracing::debug!(mac = %mac, peer = %peer.addr, error = %e, "talos event ignored");
                return;
            }
        };
        deps.metrics.talos_event(news.kind());
        tracing::debug!(mac = %mac, id = %clean(&event.id), ?news, "talos event");
        let Some(detail) = news.summary() else {
            return;
        };
        let topic = match &news {
            NodeNews::Status { .. } => Some("status".to_string()),
            NodeNews::Service { service, .. } => Some(format!("service {service}")),
            _ => None,
        };
        if let Some(topic) = topic {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            let key = (mac, topic);
            if last.get(&key) == Some(&detail) {
                return;
            }
            // Service names come from the node: keep the map from growing without bound.
            if last.len() >= MAX_TOPICS {
                last.clear();
            }
            last.insert(key, detail.clone());
        }
        deps.recorder.event(mac, EventKind::TalosEvent, detail);
        deps.orchestrator.signal(Signal::SignOfLife(mac));
    }
}

#[tonic::async_trait]
impl EventSinkService for Arc<Sink> {
    async fn publish(&self, req: Request<EventRequest>) -> Result<Response<EventResponse>, Status> {
        self.receive(req.extensions().get::<SinkPeer>(), req.get_ref());
        Ok(Response::new(EventResponse {}))
    }
}

/// Serves the event sink on `listener` until `cancel` fires.
pub async fn serve(listener: TcpListener, deps: SinkDeps, cancel: CancellationToken) {
    let (tx, mut rx) = mpsc::channel::<io::Result<SinkConn>>(16);
    let accept = tokio::spawn(accept_loop(listener, deps.clone(), tx, cancel.clone()));
    let sink = Arc::new(Sink {
        deps,
        last: Mutex::default(),
    });
    let service = EventSinkServiceServer::new(sink).max_decoding_message_size(MAX_MESSAGE);
    let incoming = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let result = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(60)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .max_concurrent_streams(Some(16))
        .timeout(Duration::from_secs(10))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, cancel.cancelled_owned())
        .await;
    accept.abort();
    if let Err(e) = result {
        tracing::error!(error = %e, "talos event sink stopped");
    }
}

async fn accept_loop(
    listener: TcpListener,
    deps: SinkDeps,
    tx: mpsc::Sender<io::Result<SinkConn>>,
    cancel: CancellationToken,
) {
    let limits = ConnLimits::new(MAX_CONNECTIONS, MAX_PER_PEER);
    let warned = peers::Warned::default();
    loop {
        let (tcp, addr) = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "talos event sink: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let permit = match limits.admit(addr.ip()) {
            Ok(permit) => permit,
            Err(reason) => {
                deps.metrics.push_refused("events", reason);
                warned.warn(addr.ip(), || {
                    tracing::warn!(peer = %addr, reason, "talos event sink: connection refused");
                });
                continue;
            }
        };
        let (deps, tx, warned) = (deps.clone(), tx.clone(), warned.clone());
        tokio::spawn(async move {
            let arp = peers::arp_entry(addr.ip());
            if peers::attribute(
                &deps.inventory,
                &deps.neighbours,
                addr.ip(),
                arp,
                deps.recorder.now_ms(),
            )
            .is_none()
            {
                deps.metrics.push_refused("events", "unknown-peer");
                warned.warn(addr.ip(), || {
                    tracing::warn!(peer = %addr, "talos event sink: connection from an address that is no known machine; closed");
                });
                return;
            }
            // A connection that never speaks holds a slot for nothing.
            if tokio::time::timeout(FIRST_BYTE_TIMEOUT, tcp.readable())
                .await
                .is_err()
            {
                deps.metrics.push_refused("events", "silent");
                return;
            }
            let _ = tcp.set_nodelay(true);
            let conn = SinkConn {
                tcp,
                peer: SinkPeer { addr, arp },
                _permit: permit,
            };
            let _ = tx.send(Ok(conn)).await;
        });
    }
}

/// An accepted connection with its peer and its place under the limits.
struct SinkConn {
    tcp: TcpStream,
    peer: SinkPeer,
    _permit: ConnPermit,
}

impl Connected for SinkConn {
    type ConnectInfo = SinkPeer;

    fn connect_info(&self) -> SinkPeer {
        self.peer.clone()
    }
}

impl AsyncRead for SinkConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for SinkConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any<T: Message>(name: &str, msg: &T) -> prost_types::Any {
        prost_types::Any {
            type_url: format!("type.googleapis.com/machine.{name}"),
            value: msg.encode_to_vec(),
        }
    }

    #[test]
    fn talos_events_decode_into_news() {
        let status = m::MachineStatusEvent {
            stage: m::machine_status_event::MachineStage::Running as i32,
            status: Some(m::machine_status_event::MachineStatus {
                ready: false,
                unmet_conditions: vec![m::machine_status_event::machine_status::UnmetCondition {
                    name: "nodeReady".into(),
                    reason: "node not ready".into(),
                }],
            }),
        };
        let news = NodeNews::decode(Some(&any("MachineStatusEvent", &status))).unwrap();
        assert_eq!(
            news.summary().unwrap(),
            "talos: stage running, not ready (nodeReady)"
        );
        let seq = m::SequenceEvent {
            sequence: "install".into(),
            action: m::sequence_event::Action::Stop as i32,
            error: Some(m::SequenceError {
                code: 0,
                message: "disk\u{1b}[31m not found".into(),
            }),
        };
        let news = NodeNews::decode(Some(&any("SequenceEvent", &seq))).unwrap();
        assert_eq!(
            news.summary().unwrap(),
            "talos: sequence install failed: disk [31m not found"
        );
        let phase = m::PhaseEvent {
            phase: "saveConfig".into(),
            action: m::phase_event::Action::Stop as i32,
        };
        let news = NodeNews::decode(Some(&any("PhaseEvent", &phase))).unwrap();
        assert_eq!(
            news,
            NodeNews::Phase {
                phase: "saveConfig".into(),
                action: "finished"
            }
        );
        assert_eq!(news.summary(), None);
        let apid = m::ServiceStateEvent {
            service: "apid".into(),
            action: m::service_state_event::Action::Running as i32,
            message: "Health check successful".into(),
        };
        let news = NodeNews::decode(Some(&any("ServiceStateEvent", &apid))).unwrap();
        assert_eq!(
            news.summary().unwrap(),
            "talos: service apid running: Health check successful"
        );
        let other = NodeNews::decode(Some(&any("AddressEvent", &phase))).unwrap();
        assert_eq!(other.kind(), "other");
        let broken = prost_types::Any {
            type_url: "type.googleapis.com/machine.SequenceEvent".into(),
            value: vec![0xff, 0xff, 0xff],
        };
        assert!(NodeNews::decode(Some(&broken)).is_err());
        assert!(NodeNews::decode(None).is_err());
    }

    #[test]
    fn node_text_is_bounded() {
        let long = "x".repeat(1000);
        let cleaned = clean(&long);
        assert_eq!(cleaned.chars().count(), MAX_TEXT + 1);
    }
}
