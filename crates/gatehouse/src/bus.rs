//! The outbound bus: how the core sends packets to devices without knowing MQTT.
//!
//! The core holds an `Arc<dyn Bus>` and publishes through it; the MQTT gateway implements it
//! over its client (embedded broker or external, one code path), and tests implement it with a
//! recorder. Inbound packets go the other way through [`PacketHandler`], which the core
//! implements and the gateway calls from its event loop.

/// MQTT delivery guarantee of one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    /// Fire and forget (PING broadcasts: the next one is 10 s away).
    AtMostOnce,
    /// Acknowledged by the broker (config pushes).
    AtLeastOnce,
}

/// Sends packets to devices. Implementations never block the caller (the core calls it while
/// holding its device table lock).
pub trait Bus: Send + Sync + 'static {
    /// Queues one publish. Returns `false` if it could not be queued (the client's queue is
    /// full or the client is stopped); the bus logs and counts that, and the core's push
    /// tracking re-sends config pushes that were lost.
    fn publish(&self, topic: String, payload: Vec<u8>, qos: Qos) -> bool;

    /// Disconnects every session logged in as `user` (a credential's subject key), because
    /// its credential was revoked or rotated. Only the embedded broker can; for an external
    /// one this does nothing (its own password file decides).
    fn disconnect(&self, _user: &str) {}
}

/// Receives what devices send. Called from the gateway's event loop: must not block on I/O.
pub trait PacketHandler: Send + Sync + 'static {
    /// One inbound publish, exactly as received (topic any case, payload any bytes).
    fn packet(&self, topic: &str, payload: &[u8]);
    /// Like [`PacketHandler::packet`], and for a packet whose acknowledgement must mean
    /// "recorded" (a state change: SKABEN SUP and INFO), the commit to wait for before
    /// acknowledging it. The embedded broker sends its PUBACK only after that.
    fn packet_durable(&self, topic: &str, payload: &[u8]) -> Option<crate::store::Commit> {
        self.packet(topic, payload);
        None
    }
    /// The client is (re)connected to the broker and subscribed: packets published while it was
    /// away may be lost, so pending pushes should be re-sent.
    fn connected(&self);
    /// The client lost the broker (it reconnects by itself); `/readyz` says so meanwhile.
    fn disconnected(&self) {}
}

/// A bus that drops everything: for a server started without MQTT, and for tests of the core
/// that don't look at outbound packets.
#[derive(Debug, Default)]
pub struct NullBus;

impl Bus for NullBus {
    fn publish(&self, _topic: String, _payload: Vec<u8>, _qos: Qos) -> bool {
        true
    }
}
