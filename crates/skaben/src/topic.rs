//! Topics: `ask/<type>/<id>/<command>` from devices, `<type>/<id|all>/<command>` to them.
//!
//! Devices may write any case (older firmware sent `ASK/LOCK/…/PONG`); parsing lowercases with
//! ASCII rules only, so that a non-ASCII letter whose Unicode lowercase is ASCII (the Kelvin sign
//! `K` → `k`) cannot pass for a real type. Builders always write lowercase.
//!
//! # Subscribing
//!
//! MQTT topic filters are case-sensitive: `ask/#` does not match `ASK/LOCK/…/PONG`. The gateway
//! therefore subscribes to every filter in [`SUBSCRIPTIONS`] (`ask/#` and `ASK/#`, the two forms
//! seen in the field). A device writing a mixed-case prefix such as `Ask/` would need one more
//! filter; none is known.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The filter that matches every device → server packet written in lowercase.
///
/// MQTT topics are case-sensitive, so this filter alone misses older firmware that writes
/// `ASK/…`; subscribe to [`SUBSCRIPTIONS`] instead.
pub const SUBSCRIPTION: &str = "ask/#";

/// Every filter the gateway subscribes to: lowercase `ask/#` for today's devices, `ASK/#` for
/// older firmware that writes topics in uppercase (MQTT matches filters case-sensitively).
pub const SUBSCRIPTIONS: &[&str] = &["ask/#", "ASK/#"];

/// Longest device type accepted, in bytes.
pub const MAX_TYPE_LEN: usize = 32;

/// Longest device id accepted, in bytes. A MAC is 12 hex digits; ids are not required to be one.
pub const MAX_ID_LEN: usize = 64;

/// The first segment of every device → server topic.
const ASK: &str = "ask";

/// The device id that addresses every device of a type.
const ALL: &str = "all";

/// Longest piece of a topic quoted back in an error.
const MAX_QUOTE: usize = 64;

/// Which devices of a type a packet is from or for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// One device, by its id (usually its MAC as 12 lowercase hex digits), lowercase.
    Device(String),
    /// `all`: inbound, a small device speaking for its whole type (`ask/pwr/all/cup`);
    /// outbound, a broadcast to every device of the type.
    All,
}

impl Target {
    /// The id segment as written in a topic: the device id, or `all`.
    pub fn as_str(&self) -> &str {
        match self {
            Target::Device(id) => id,
            Target::All => ALL,
        }
    }

    /// Reads an id segment: `all` (any case) is [`Target::All`], anything else must be a valid
    /// device id.
    pub fn parse(segment: &str) -> Result<Target, TopicError> {
        if segment.is_empty() {
            return Err(TopicError::EmptySegment { segment: "id" });
        }
        let id = segment.to_ascii_lowercase();
        if id == ALL {
            return Ok(Target::All);
        }
        check_id(&id)?;
        Ok(Target::Device(id))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The command of a device → server packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    /// Answer to a PING, with the device's stored timestamp and maybe its config hash.
    Pong,
    /// "Send me my config now".
    Cup,
    /// Players changed the device's local state; `datahold` holds the changed keys.
    Sup,
    /// An event that is not a config change (a code typed, a hack failed).
    Info,
    /// The device applied a CUP.
    Ack,
    /// The device refused a CUP.
    Nack,
}

impl Command {
    pub const ALL: [Command; 6] = [
        Command::Pong,
        Command::Cup,
        Command::Sup,
        Command::Info,
        Command::Ack,
        Command::Nack,
    ];

    /// The command as written in a topic (lowercase).
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Pong => "pong",
            Command::Cup => "cup",
            Command::Sup => "sup",
            Command::Info => "info",
            Command::Ack => "ack",
            Command::Nack => "nack",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Command {
    type Err = TopicError;

    /// Any case: `PONG`, `Pong` and `pong` are all [`Command::Pong`].
    fn from_str(s: &str) -> Result<Command, TopicError> {
        let lower = s.to_ascii_lowercase();
        Command::ALL
            .into_iter()
            .find(|c| c.as_str() == lower)
            .ok_or_else(|| TopicError::UnknownCommand {
                command: quote(s),
                expected: "pong, cup, sup, info, ack or nack",
            })
    }
}

/// The command of a server → device packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutboundCommand {
    /// Keep-alive with the server's time; always broadcast (`<type>/all/ping`).
    Ping,
    /// A config push.
    Cup,
}

impl OutboundCommand {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboundCommand::Ping => "ping",
            OutboundCommand::Cup => "cup",
        }
    }
}

impl fmt::Display for OutboundCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OutboundCommand {
    type Err = TopicError;

    fn from_str(s: &str) -> Result<OutboundCommand, TopicError> {
        match s.to_ascii_lowercase().as_str() {
            "ping" => Ok(OutboundCommand::Ping),
            "cup" => Ok(OutboundCommand::Cup),
            _ => Err(TopicError::UnknownCommand {
                command: quote(s),
                expected: "ping or cup",
            }),
        }
    }
}

/// Why a topic is not a SKABEN topic. Shown to operators: each says what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TopicError {
    #[error("topic has {count} segments separated by '/', expected {expected}")]
    Segments { count: usize, expected: usize },
    #[error(
        "topic starts with {prefix:?}, expected \"ask\" (device → server topics are ask/<type>/<id>/<command>)"
    )]
    NotAsk { prefix: String },
    #[error("the {segment} segment of the topic is empty")]
    EmptySegment { segment: &'static str },
    #[error("device type {device_type:?} {reason}")]
    BadType {
        device_type: String,
        reason: &'static str,
    },
    #[error("device id {id:?} {reason}")]
    BadId { id: String, reason: &'static str },
    #[error("unknown command {command:?}, expected {expected}")]
    UnknownCommand {
        command: String,
        expected: &'static str,
    },
}

/// A device → server topic, parsed: `ask/<type>/<id>/<command>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Inbound {
    /// Lowercase, `[a-z0-9_-]{1,32}`.
    pub device_type: String,
    pub target: Target,
    pub command: Command,
}

impl Inbound {
    /// Parses a device → server topic, in any case.
    ///
    /// Checks, in order: four `/`-separated segments; none empty; the first is `ask`; the type
    /// and the id (after ASCII lowercasing) are made of `a-z`, `0-9`, `_`, `-` and at most 32
    /// and 64 bytes long; the command is one of [`Command`]'s.
    pub fn parse(topic: &str) -> Result<Inbound, TopicError> {
        let segments: Vec<&str> = topic.split('/').collect();
        let [ask, device_type, id, command] = segments[..] else {
            return Err(TopicError::Segments {
                count: segments.len(),
                expected: 4,
            });
        };
        for (segment, name) in [(ask, "first"), (device_type, "type"), (id, "id")] {
            if segment.is_empty() {
                return Err(TopicError::EmptySegment { segment: name });
            }
        }
        if command.is_empty() {
            return Err(TopicError::EmptySegment { segment: "command" });
        }
        if !ask.eq_ignore_ascii_case(ASK) {
            return Err(TopicError::NotAsk { prefix: quote(ask) });
        }
        Ok(Inbound {
            device_type: parse_type(device_type)?,
            target: Target::parse(id)?,
            command: command.parse()?,
        })
    }

    /// The id of the device, or `None` for `all`.
    pub fn device_id(&self) -> Option<&str> {
        match &self.target {
            Target::Device(id) => Some(id),
            Target::All => None,
        }
    }

    /// The topic in lowercase, as today's devices write it (for simulators and tests).
    pub fn topic(&self) -> String {
        format!(
            "{ASK}/{}/{}/{}",
            self.device_type,
            self.target.as_str(),
            self.command.as_str()
        )
    }
}

/// A server → device topic: `<type>/<id|all>/<command>`.
///
/// The server builds these with [`ping_topic`], [`cup_topic`], [`cup_all_topic`] or
/// [`Outbound::new`]; [`Outbound::parse`] is for the other end (virtual props, tests).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Outbound {
    pub device_type: String,
    pub target: Target,
    pub command: OutboundCommand,
}

impl Outbound {
    /// Checks and lowercases the type; the target's id, if any, must be a valid device id.
    pub fn new(
        device_type: &str,
        target: Target,
        command: OutboundCommand,
    ) -> Result<Outbound, TopicError> {
        let target = match target {
            Target::Device(id) => Target::Device(validate_device_id(&id)?),
            Target::All => Target::All,
        };
        Ok(Outbound {
            device_type: validate_device_type(device_type)?,
            target,
            command,
        })
    }

    /// Parses a server → device topic, in any case, with the same rules as [`Inbound::parse`].
    pub fn parse(topic: &str) -> Result<Outbound, TopicError> {
        let segments: Vec<&str> = topic.split('/').collect();
        let [device_type, id, command] = segments[..] else {
            return Err(TopicError::Segments {
                count: segments.len(),
                expected: 3,
            });
        };
        for (segment, name) in [(device_type, "type"), (id, "id"), (command, "command")] {
            if segment.is_empty() {
                return Err(TopicError::EmptySegment { segment: name });
            }
        }
        Ok(Outbound {
            device_type: validate_device_type(device_type)?,
            target: Target::parse(id)?,
            command: command.parse()?,
        })
    }

    /// The topic to publish, lowercase.
    pub fn topic(&self) -> String {
        format!(
            "{}/{}/{}",
            self.device_type,
            self.target.as_str(),
            self.command.as_str()
        )
    }
}

/// `<type>/all/ping`.
pub fn ping_topic(device_type: &str) -> Result<String, TopicError> {
    Outbound::new(device_type, Target::All, OutboundCommand::Ping).map(|o| o.topic())
}

/// `<type>/<id>/cup`: a config push to one device. `id` = `all` is refused (use
/// [`cup_all_topic`]), so that a broadcast is never sent by accident.
pub fn cup_topic(device_type: &str, device_id: &str) -> Result<String, TopicError> {
    Outbound::new(
        device_type,
        Target::Device(device_id.to_string()),
        OutboundCommand::Cup,
    )
    .map(|o| o.topic())
}

/// `<type>/all/cup`: a config push to every device of the type (dumb types share one config).
pub fn cup_all_topic(device_type: &str) -> Result<String, TopicError> {
    Outbound::new(device_type, Target::All, OutboundCommand::Cup).map(|o| o.topic())
}

/// The `<type>/<id>` (or `<type>/all`) a topic that does not parse seems to be about, so that
/// its error can be filed under that device: `ask/<type>/<id>/<anything>` in any case, with a
/// valid type and id. `None` when the topic names no device.
pub fn device_of_topic(topic: &str) -> Option<String> {
    let segments: Vec<&str> = topic.split('/').collect();
    let [ask, device_type, id, _] = segments[..] else {
        return None;
    };
    if !ask.eq_ignore_ascii_case(ASK) || device_type.is_empty() || id.is_empty() {
        return None;
    }
    let device_type = validate_device_type(device_type).ok()?;
    let id = if id.eq_ignore_ascii_case(ALL) {
        ALL.to_string()
    } else {
        validate_device_id(id).ok()?
    };
    Some(format!("{device_type}/{id}"))
}

/// Checks a device type (an operator may add types) and returns it lowercase.
///
/// `ask` is refused: `ask/all/ping` would land in the device → server namespace the server
/// subscribes to.
pub fn validate_device_type(device_type: &str) -> Result<String, TopicError> {
    if device_type.is_empty() {
        return Err(TopicError::EmptySegment { segment: "type" });
    }
    let lower = parse_type(device_type)?;
    if lower == ASK {
        return Err(TopicError::BadType {
            device_type: lower,
            reason: "is reserved (\"ask\" starts every device → server topic)",
        });
    }
    Ok(lower)
}

/// Checks a device id and returns it lowercase. `all` is refused: it is the broadcast address,
/// not a device.
pub fn validate_device_id(device_id: &str) -> Result<String, TopicError> {
    if device_id.is_empty() {
        return Err(TopicError::EmptySegment { segment: "id" });
    }
    let lower = device_id.to_ascii_lowercase();
    if lower == ALL {
        return Err(TopicError::BadId {
            id: lower,
            reason: "is reserved (\"all\" addresses every device of the type)",
        });
    }
    check_id(&lower)?;
    Ok(lower)
}

/// Lowercases and checks a type segment (non-empty already). `ask` passes here: as the type of
/// an inbound topic (`ask/ask/…`) it is harmless; only [`validate_device_type`] refuses it.
fn parse_type(segment: &str) -> Result<String, TopicError> {
    let lower = segment.to_ascii_lowercase();
    if lower.len() > MAX_TYPE_LEN {
        return Err(TopicError::BadType {
            device_type: quote(&lower),
            reason: "is longer than 32 bytes",
        });
    }
    if !is_name(&lower) {
        return Err(TopicError::BadType {
            device_type: quote(&lower),
            reason: "has a character other than a-z, 0-9, '_' and '-'",
        });
    }
    Ok(lower)
}

/// Checks a lowercase, non-empty id.
fn check_id(lower: &str) -> Result<(), TopicError> {
    if lower.len() > MAX_ID_LEN {
        return Err(TopicError::BadId {
            id: quote(lower),
            reason: "is longer than 64 bytes",
        });
    }
    if !is_name(lower) {
        return Err(TopicError::BadId {
            id: quote(lower),
            reason: "has a character other than a-z, 0-9, '_' and '-'",
        });
    }
    Ok(())
}

/// `[a-z0-9_-]*`.
fn is_name(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A piece of a topic for an error message, cut to [`MAX_QUOTE`] bytes.
fn quote(s: &str) -> String {
    if s.len() <= MAX_QUOTE {
        return s.to_string();
    }
    let mut cut = MAX_QUOTE;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &s[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(topic: &str) -> TopicError {
        match Inbound::parse(topic) {
            Ok(ok) => panic!("{topic:?} parsed as {ok:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn parses_any_case_into_lowercase() {
        let inbound = Inbound::parse("ASK/Lock/B827EB0A1B2C/PONG").unwrap();
        assert_eq!(
            inbound,
            Inbound {
                device_type: "lock".into(),
                target: Target::Device("b827eb0a1b2c".into()),
                command: Command::Pong,
            }
        );
        assert_eq!(inbound.topic(), "ask/lock/b827eb0a1b2c/pong");
        assert_eq!(inbound.device_id(), Some("b827eb0a1b2c"));
    }

    #[test]
    fn all_is_the_whole_type() {
        let inbound = Inbound::parse("ask/pwr/ALL/cup").unwrap();
        assert_eq!(inbound.target, Target::All);
        assert_eq!(inbound.device_id(), None);
    }

    #[test]
    fn every_command() {
        for (text, command) in [
            ("pong", Command::Pong),
            ("cup", Command::Cup),
            ("sup", Command::Sup),
            ("info", Command::Info),
            ("ack", Command::Ack),
            ("nack", Command::Nack),
            ("NaCk", Command::Nack),
        ] {
            let topic = format!("ask/lock/b827eb0a1b2c/{text}");
            assert_eq!(Inbound::parse(&topic).unwrap().command, command, "{topic}");
        }
    }

    #[test]
    fn wrong_shape() {
        assert_eq!(
            err("ask/lock/b827eb0a1b2c"),
            TopicError::Segments {
                count: 3,
                expected: 4
            }
        );
        assert_eq!(
            err("ask/lock/b827eb0a1b2c/pong/extra"),
            TopicError::Segments {
                count: 5,
                expected: 4
            }
        );
        assert_eq!(
            err("lock/all/ping"),
            TopicError::Segments {
                count: 3,
                expected: 4
            }
        );
        assert_eq!(
            err("tell/lock/b827eb0a1b2c/pong"),
            TopicError::NotAsk {
                prefix: "tell".into()
            }
        );
        assert_eq!(
            err(""),
            TopicError::Segments {
                count: 1,
                expected: 4
            }
        );
    }

    #[test]
    fn empty_segments_are_named() {
        for (topic, segment) in [
            ("/lock/b827eb0a1b2c/pong", "first"),
            ("ask//b827eb0a1b2c/pong", "type"),
            ("ask/lock//pong", "id"),
            ("ask/lock/b827eb0a1b2c/", "command"),
        ] {
            assert_eq!(err(topic), TopicError::EmptySegment { segment }, "{topic}");
        }
    }

    #[test]
    fn bad_type_and_id() {
        assert!(matches!(
            err("ask/lo+ck/b827eb0a1b2c/pong"),
            TopicError::BadType { device_type, .. } if device_type == "lo+ck"
        ));
        let long = "x".repeat(33);
        assert!(matches!(
            err(&format!("ask/{long}/b827eb0a1b2c/pong")),
            TopicError::BadType { reason, .. } if reason.contains("longer")
        ));
        assert!(Inbound::parse(&format!("ask/{}/b827eb0a1b2c/pong", "x".repeat(32))).is_ok());
        assert!(matches!(
            err("ask/lock/b8:27:eb/pong"),
            TopicError::BadId { id, .. } if id == "b8:27:eb"
        ));
        assert!(matches!(
            err(&format!("ask/lock/{}/pong", "1".repeat(65))),
            TopicError::BadId { reason, .. } if reason.contains("longer")
        ));
        assert!(Inbound::parse(&format!("ask/lock/{}/pong", "1".repeat(64))).is_ok());
        // The Kelvin sign lowercases to 'k' under Unicode rules, not under ASCII ones.
        assert!(matches!(
            err("ask/loc\u{212A}/b827eb0a1b2c/pong"),
            TopicError::BadType { .. }
        ));
    }

    #[test]
    fn unknown_command_keeps_its_text() {
        let e = err("ask/lock/b827eb0a1b2c/Reboot");
        assert_eq!(
            e,
            TopicError::UnknownCommand {
                command: "Reboot".into(),
                expected: "pong, cup, sup, info, ack or nack"
            }
        );
        assert!(e.to_string().contains("\"Reboot\""), "{e}");
    }

    #[test]
    fn long_text_is_cut_in_errors() {
        let e = err(&format!("ask/lock/b827eb0a1b2c/{}", "é".repeat(100)));
        let TopicError::UnknownCommand { command, .. } = e else {
            panic!("{e:?}");
        };
        assert!(command.len() <= MAX_QUOTE + '…'.len_utf8());
        assert!(command.ends_with('…'));
    }

    #[test]
    fn builders() {
        assert_eq!(ping_topic("LOCK").unwrap(), "lock/all/ping");
        assert_eq!(
            cup_topic("lock", "B827EB0A1B2C").unwrap(),
            "lock/b827eb0a1b2c/cup"
        );
        assert_eq!(cup_all_topic("rgb").unwrap(), "rgb/all/cup");
        assert!(matches!(
            cup_topic("lock", "all"),
            Err(TopicError::BadId { .. })
        ));
        assert!(matches!(ping_topic("ask"), Err(TopicError::BadType { .. })));
        assert!(matches!(ping_topic("a/b"), Err(TopicError::BadType { .. })));
        assert!(matches!(ping_topic("#"), Err(TopicError::BadType { .. })));
        assert_eq!(
            ping_topic(""),
            Err(TopicError::EmptySegment { segment: "type" })
        );
        assert_eq!(
            cup_topic("lock", ""),
            Err(TopicError::EmptySegment { segment: "id" })
        );
    }

    #[test]
    fn outbound_parses_what_builders_write() {
        let parsed = Outbound::parse("RGB/All/CUP").unwrap();
        assert_eq!(
            parsed,
            Outbound {
                device_type: "rgb".into(),
                target: Target::All,
                command: OutboundCommand::Cup
            }
        );
        assert_eq!(parsed.topic(), cup_all_topic("rgb").unwrap());
        assert!(matches!(
            Outbound::parse("lock/all/pong"),
            Err(TopicError::UnknownCommand {
                expected: "ping or cup",
                ..
            })
        ));
    }

    #[test]
    fn subscriptions_cover_both_cases() {
        assert_eq!(SUBSCRIPTION, "ask/#");
        assert!(SUBSCRIPTIONS.contains(&"ask/#"));
        assert!(SUBSCRIPTIONS.contains(&"ASK/#"));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(
            err("ask/lock").to_string(),
            "topic has 2 segments separated by '/', expected 4"
        );
        assert_eq!(
            err("ask/lo ck/b827eb0a1b2c/pong").to_string(),
            "device type \"lo ck\" has a character other than a-z, 0-9, '_' and '-'"
        );
    }

    #[test]
    fn a_bad_topic_is_filed_under_the_device_it_names() {
        let cases = [
            ("ask/lock/b827eb0a1b2c/bogus", Some("lock/b827eb0a1b2c")),
            ("ASK/LOCK/B827EB0A1B2C/PONGX", Some("lock/b827eb0a1b2c")),
            ("ask/pwr/ALL/nope", Some("pwr/all")),
            ("ask/lock/b827/pong/extra", None),
            ("ask/lock//pong", None),
            ("ask//id/pong", None),
            ("tell/lock/b827/pong", None),
            ("ask/ask/b827/pong", None),
            ("ask/lo ck/b827/pong", None),
            ("ask/lock/b8.27/pong", None),
            ("", None),
        ];
        for (topic, want) in cases {
            assert_eq!(device_of_topic(topic).as_deref(), want, "{topic:?}");
        }
    }
}
