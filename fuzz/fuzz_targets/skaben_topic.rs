//! Fuzzes the SKABEN topic parsers with arbitrary UTF-8 (MQTT topics are UTF-8 strings; the
//! gateway never sees anything else).
//!
//! Besides "no panic", it checks what must hold for any topic:
//! - what [`Inbound::parse`] accepts is lowercase `[a-z0-9_-]` in bounds, and its
//!   [`Inbound::topic`] parses back to the same value; the same for [`Outbound`];
//! - [`device_of_topic`] (what the server files an unreadable topic under) agrees with the
//!   parser: it names the device the topic parses to, whenever the type is a valid one;
//! - [`validate_device_type`] / [`validate_device_id`] give names that validate to themselves,
//!   and the builders ([`cup_topic`], [`ping_topic`], [`cup_all_topic`]) only build topics
//!   [`Outbound::parse`] reads back to what was asked.

#![no_main]

use libfuzzer_sys::fuzz_target;
use skaben::topic::{MAX_ID_LEN, MAX_TYPE_LEN};
use skaben::{
    Command, Inbound, Outbound, OutboundCommand, Target, cup_all_topic, cup_topic, device_of_topic,
    ping_topic, validate_device_id, validate_device_type,
};

fuzz_target!(|data: &[u8]| {
    let Ok(topic) = std::str::from_utf8(data) else {
        return;
    };

    match Inbound::parse(topic) {
        Ok(inbound) => {
            check_name(&inbound.device_type, MAX_TYPE_LEN);
            if let Target::Device(id) = &inbound.target {
                check_name(id, MAX_ID_LEN);
                assert_ne!(id, "all", "`all` parsed as a device");
            }
            let written = inbound.topic();
            assert!(
                written.eq_ignore_ascii_case(topic),
                "{written:?} from {topic:?}"
            );
            assert_eq!(
                Inbound::parse(&written).as_ref(),
                Ok(&inbound),
                "{written:?}"
            );
            if inbound.device_type != "ask" {
                let want = format!("{}/{}", inbound.device_type, inbound.target);
                assert_eq!(device_of_topic(topic), Some(want), "{topic:?}");
            }
        }
        Err(e) => {
            // Errors are shown to operators: never empty, never the whole of a huge topic.
            // The pieces quoted are cut to 64 bytes, each at most 6 characters once escaped
            // (`\u{1e}`), in a sentence of under 200.
            let text = e.to_string();
            assert!(!text.is_empty());
            assert!(
                text.len() <= 64 * 6 + 200,
                "error of {} bytes: {text:?}",
                text.len()
            );
        }
    }

    if let Ok(outbound) = Outbound::parse(topic) {
        check_name(&outbound.device_type, MAX_TYPE_LEN);
        assert_ne!(
            outbound.device_type, "ask",
            "`ask` accepted as an outbound type"
        );
        let written = outbound.topic();
        assert_eq!(
            Outbound::parse(&written).as_ref(),
            Ok(&outbound),
            "{written:?}"
        );
    }

    // The pieces of the input, as an operator might type a type or an id.
    for piece in topic.split('/') {
        if let Ok(t) = validate_device_type(piece) {
            check_name(&t, MAX_TYPE_LEN);
            assert_eq!(validate_device_type(&t).as_deref(), Ok(t.as_str()));
            for (built, command) in [
                (ping_topic(piece), OutboundCommand::Ping),
                (cup_all_topic(piece), OutboundCommand::Cup),
            ] {
                let built = built.expect("a valid type builds a broadcast topic");
                let back = Outbound::parse(&built).expect("a built topic parses");
                assert_eq!(
                    (back.device_type, back.target, back.command),
                    (t.clone(), Target::All, command)
                );
            }
        }
        if let Ok(id) = validate_device_id(piece) {
            check_name(&id, MAX_ID_LEN);
            assert_ne!(id, "all");
            assert_eq!(validate_device_id(&id).as_deref(), Ok(id.as_str()));
            let built = cup_topic("lock", piece).expect("a valid id builds a CUP topic");
            let back = Outbound::parse(&built).expect("a built topic parses");
            assert_eq!(back.target, Target::Device(id));
        }
        if let Ok(c) = piece.parse::<Command>() {
            assert!(c.as_str().eq_ignore_ascii_case(piece));
        }
    }
});

/// Non-empty, at most `max` bytes of `a-z`, `0-9`, `_`, `-`.
fn check_name(name: &str, max: usize) {
    assert!(!name.is_empty() && name.len() <= max, "{name:?}");
    assert!(
        name.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'),
        "{name:?}"
    );
}
