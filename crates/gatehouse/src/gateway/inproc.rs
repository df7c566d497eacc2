//! The core's connection to the embedded broker, in-process.
//!
//! Through a loopback MQTT client every SKABEN round trip costs the broker two more TCP
//! writes and reads and two more acknowledgements than the devices' own traffic; on the
//! 2-core machine that halved the round-trip rate (see `docs/benchmarks.md`). In-process, the
//! broker hands each publish to [`InboundHook`] from the publishing client's task (so one
//! device's packets stay in order), and [`InProcessBus`] routes the core's publishes with the
//! broker's router, at the QoS asked, to whoever subscribes.
//!
//! Invariants: the same [`PacketHandler`] and [`Bus`] contracts as the MQTT client (the core
//! cannot tell them apart); publishes are routed in the order they were made; a publish that
//! cannot be queued is counted and reported `false`, like the client's. The queue between the
//! core and the router is bounded in publishes ([`QUEUE`]) and in bytes ([`QUEUE_BYTES`]), and
//! routing never waits for a subscriber: a client whose delivery lane is full gets the message
//! in its own (capped, watched) queue, so one client that does not read cannot pace the route
//! loop and make this queue grow (it did: 2.8 GB of 200 KiB CUPs waiting here).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use mqtt5::broker::events::{
    BrokerEventHandler, ClientConnectEvent, ClientDisconnectEvent, ClientPublishEvent,
    PublishAction,
};
use mqtt5::broker::router::MessageRouter;
use mqtt5::packet::publish::PublishPacket;
use tokio::sync::{mpsc, watch};
use tracing::warn;

use crate::bus::{Bus, PacketHandler, Qos};
use crate::gateway::access::Access;

/// Publishes queued for the router before `publish` reports failure.
const QUEUE: usize = 100_000;
/// Bytes (payloads and topics) queued for the router before `publish` reports failure.
pub const QUEUE_BYTES: usize = 64 * 1024 * 1024;

/// The broker's publish hook: devices' `ask/...` packets go to the core.
pub struct InboundHook {
    /// The core will attach (`EmbeddedBroker::start_linked`); until then packets wait. A
    /// broker started without it routes packets like any broker (for clients that connect).
    linked: bool,
    /// The gatekeeper of a linked broker: told when sessions end.
    access: Option<Arc<Access>>,
    handler: OnceLock<Arc<dyn PacketHandler>>,
    /// Turns true once `handler` is set: packets that arrive earlier (the broker accepts
    /// devices while the core is still loading) wait for it instead of being lost.
    ready: watch::Sender<bool>,
}

impl InboundHook {
    pub(crate) fn new(access: Option<Arc<Access>>) -> Self {
        InboundHook {
            linked: access.is_some(),
            access,
            handler: OnceLock::new(),
            ready: watch::Sender::new(false),
        }
    }
}

impl InboundHook {
    fn attach(&self, handler: Arc<dyn PacketHandler>) {
        if self.handler.set(handler).is_err() {
            warn!("the embedded broker's packet handler was already set; keeping the first");
        }
        self.ready.send_replace(true);
    }
}

impl BrokerEventHandler for InboundHook {
    fn on_client_connect<'a>(
        &'a self,
        event: ClientConnectEvent,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        if let Some(a) = &self.access {
            a.connected(&event.client_id);
        }
        Box::pin(std::future::ready(()))
    }

    fn on_client_disconnect<'a>(
        &'a self,
        event: ClientDisconnectEvent,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            if let Some(a) = &self.access {
                a.disconnected(&event.client_id).await;
            }
        })
    }

    fn on_client_publish<'a>(
        &'a self,
        event: ClientPublishEvent,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = PublishAction> + Send + 'a>> {
        // The broker acknowledges the publish once this resolves: a state change only when it
        // is recorded. Still routed: a monitoring client subscribed to `ask/#` sees it too.
        Box::pin(async move {
            let waits_for_core = self.linked || self.handler.get().is_some();
            if !waits_for_core
                || !event
                    .topic
                    .get(..4)
                    .is_some_and(|p| p.eq_ignore_ascii_case("ask/"))
            {
                return PublishAction::Continue;
            }
            let handler = match self.handler.get() {
                Some(h) => h.clone(),
                None => {
                    let mut ready = self.ready.subscribe();
                    if ready.wait_for(|&r| r).await.is_err() {
                        return PublishAction::Continue;
                    }
                    match self.handler.get() {
                        Some(h) => h.clone(),
                        None => return PublishAction::Continue,
                    }
                }
            };
            if let Some(c) = handler.packet_durable(&event.topic, &event.payload)
                && let Err(e) = c.wait().await
            {
                warn!(error = %e, "a device's packet was not recorded");
            }
            PublishAction::Continue
        })
    }
}

/// The core's bus into the embedded broker.
#[derive(Clone)]
pub struct InProcessBus {
    tx: mpsc::Sender<(String, Vec<u8>, Qos)>,
    /// Bytes in `tx` not yet routed.
    queued_bytes: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
    access: Option<Arc<Access>>,
}

impl InProcessBus {
    /// Publishes that could not be queued since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Bus for InProcessBus {
    fn publish(&self, topic: String, payload: Vec<u8>, qos: Qos) -> bool {
        let size = topic.len() + payload.len();
        let over = self.queued_bytes.fetch_add(size, Ordering::AcqRel) + size > QUEUE_BYTES;
        let sent = if over {
            Err("the queue to the broker holds more than 64 MiB".to_string())
        } else {
            self.tx
                .try_send((topic, payload, qos))
                .map_err(|e| e.to_string())
        };
        match sent {
            Ok(()) => true,
            Err(e) => {
                self.queued_bytes.fetch_sub(size, Ordering::AcqRel);
                let n = self.dropped.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() {
                    warn!(dropped = n + 1, error = %e, "publish to the embedded broker not queued");
                }
                false
            }
        }
    }

    fn disconnect(&self, user: &str) {
        if let Some(a) = &self.access {
            a.disconnect(user);
        }
    }
}

/// Routes the bus's publishes; spawn [`InProcessConnection::run`].
pub struct InProcessConnection {
    rx: mpsc::Receiver<(String, Vec<u8>, Qos)>,
    queued_bytes: Arc<AtomicUsize>,
    hook: Arc<InboundHook>,
    router: Arc<MessageRouter>,
}

pub(crate) fn new(
    hook: Arc<InboundHook>,
    router: Arc<MessageRouter>,
    access: Option<Arc<Access>>,
) -> (InProcessBus, InProcessConnection) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    (
        InProcessBus {
            tx,
            queued_bytes: queued_bytes.clone(),
            dropped: Arc::new(AtomicU64::new(0)),
            access,
        },
        InProcessConnection {
            rx,
            queued_bytes,
            hook,
            router,
        },
    )
}

impl InProcessConnection {
    /// Installs `handler` as the receiver of devices' packets, tells it it is connected, and
    /// routes publishes until `shutdown`; then routes what is still queued and returns.
    pub async fn run(
        mut self,
        handler: Arc<dyn PacketHandler>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        self.hook.attach(handler.clone());
        handler.connected();
        loop {
            let next = tokio::select! {
                biased;
                m = self.rx.recv() => m,
                _ = shutdown.wait_for(|&s| s) => break,
            };
            let Some((topic, payload, qos)) = next else {
                return;
            };
            self.route(topic, payload, qos).await;
        }
        self.rx.close();
        while let Some((topic, payload, qos)) = self.rx.recv().await {
            self.route(topic, payload, qos).await;
        }
    }

    async fn route(&self, topic: String, payload: Vec<u8>, qos: Qos) {
        self.queued_bytes
            .fetch_sub(topic.len() + payload.len(), Ordering::AcqRel);
        let qos = match qos {
            Qos::AtMostOnce => mqtt5::QoS::AtMostOnce,
            Qos::AtLeastOnce => mqtt5::QoS::AtLeastOnce,
        };
        let packet = PublishPacket::new(topic, payload, qos);
        // A deadline of now: a full delivery lane sends the message to the client's queue at
        // once instead of holding every other publish up to 2 s (mqtt5's default budget).
        self.router
            .route_message_with_deadline(&packet, None, tokio::time::Instant::now())
            .await;
    }
}
