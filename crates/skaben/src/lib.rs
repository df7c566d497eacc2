//! SKABEN, the MQTT protocol of live-game props (locks, terminals, lamps, power shields, alert
//! scales), as pure code: topic strings and payload bytes in, typed values out, and builders for
//! what the server sends.
//!
//! Nothing here touches a socket, an MQTT client, a clock or a database (sans-IO). The MQTT
//! gateway owns the connection; it hands each inbound publish to [`Inbound::parse`] and
//! [`Payload::parse`], and publishes what [`ping_topic`], [`cup_topic`], [`ping_payload`] and
//! [`cup_payload`] build. The timestamps it passes in come from the caller's clock. The
//! protocol is described in `docs/protocol/skaben.md`; the decisions gatehouse made where the
//! original leaves room are listed there ("Decisions gatehouse made") and written next to the
//! code that makes them.
//!
//! The parts:
//! - [`topic`]: `ask/<type>/<id>/<command>` in, `<type>/<id|all>/<command>` out;
//! - [`payload`]: the JSON object every packet carries;
//! - [`config`]: the canonical text of a config and its hash, and JSON merge patch (RFC 7386);
//! - [`profile`]: how a CUP is laid out for each kind of client (the standard one, and the
//!   public Python client `skabenclient`, which reads `task_id`/`hash` only inside `datahold`).
//!
//! # The config hash: MD5
//!
//! [`config_hash`] is the MD5 of the canonical JSON text, as 32 lowercase hex digits. MD5
//! because that is the shape of the hashes already in the field (the spec's wire example
//! carries `d9766421904225c7f5de0e061004bb78`): a device stores whatever hash the server sends
//! and sends it back, so a hash of the same length as today's keeps any firmware that sizes or
//! compares it as 32 characters working. The hash only detects that a device's config differs
//! from the server's; it is not a security control (whoever can publish to a device's topics
//! can push it a config anyway), so MD5's broken collision resistance costs nothing here. The
//! `md-5` crate is small, pure Rust and `no_std`.

pub mod config;
pub mod payload;
pub mod profile;
pub mod topic;

pub use config::{canonical_json, config_hash, merge_patch};
pub use payload::{Payload, PayloadError};
pub use profile::{
    ClientProfile, META_KEYS, UnknownProfile, cup_payload, ping_payload, strip_meta,
};
pub use topic::{
    Command, Inbound, Outbound, OutboundCommand, SUBSCRIPTION, SUBSCRIPTIONS, Target, TopicError,
    cup_all_topic, cup_topic, device_of_topic, ping_topic, validate_device_id,
    validate_device_type,
};
