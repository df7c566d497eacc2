//! What the server sends, laid out for the client that will read it.
//!
//! Two kinds of clients exist (`docs/protocol/skaben.md`, "Compatibility with the reference
//! client" and "Client profiles"):
//! - [`ClientProfile::Standard`]: reads the top-level `task_id`, `hash` and `overwrite` of a
//!   CUP, as the packet list describes;
//! - [`ClientProfile::Reference`]: the public Python client `skabenclient` (locks, terminals).
//!   It reads `task_id` and `hash` only from inside `datahold`, knows no top-level `overwrite`,
//!   and replaces its config when the datahold holds `"FORCE": true`. It merges whatever the
//!   datahold holds into its saved config, so those keys end up in its config and in the SUPs
//!   it sends.
//!
//! A CUP for the reference client therefore carries `task_id` and `hash` both at the top level
//! and inside an object datahold, and `FORCE` inside as well as `overwrite` outside. The server
//! keeps those [`META_KEYS`] out of what it stores, hashes and merges with [`strip_meta`]; the
//! `hash` sent is the hash of the datahold *without* them, so it matches the server's stored
//! config hash when the device sends it back.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use thiserror::Error;

/// Keys the reference profile adds inside a CUP's datahold; never part of a config.
pub const META_KEYS: [&str; 3] = ["task_id", "hash", "FORCE"];

/// How a device reads a CUP. Set per device type, or per device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientProfile {
    /// Top-level `task_id`, `hash` and `overwrite`, as the packet list describes.
    #[default]
    Standard,
    /// The public Python client: meta keys inside `datahold` too, `FORCE` to replace.
    Reference,
}

impl ClientProfile {
    pub const ALL: [ClientProfile; 2] = [ClientProfile::Standard, ClientProfile::Reference];

    /// The name used in settings and the API (`standard`, `reference`).
    pub fn as_str(self) -> &'static str {
        match self {
            ClientProfile::Standard => "standard",
            ClientProfile::Reference => "reference",
        }
    }
}

impl fmt::Display for ClientProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A profile name that is neither `standard` nor `reference`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown client profile {0:?}, expected \"standard\" or \"reference\"")]
pub struct UnknownProfile(pub String);

impl FromStr for ClientProfile {
    type Err = UnknownProfile;

    /// The name in any case, surrounding white space ignored.
    fn from_str(s: &str) -> Result<ClientProfile, UnknownProfile> {
        let name = s.trim().to_ascii_lowercase();
        ClientProfile::ALL
            .into_iter()
            .find(|p| p.as_str() == name)
            .ok_or_else(|| UnknownProfile(s.to_string()))
    }
}

/// The payload of a CUP server → device.
///
/// `datahold` is the config (or, for a merge, the keys to merge), `hash` the
/// [`config_hash`](crate::config_hash) of the device's full config after this push, `overwrite`
/// whether the device must replace its config rather than merge, `timestamp` the server's clock.
///
/// - Standard: `{"timestamp", "datahold", "task_id", "hash"}`, plus `"overwrite": true` when
///   replacing (absent means merge).
/// - Reference: the same top-level fields; when `datahold` is an object, its [`META_KEYS`] are
///   dropped and `task_id` and `hash` put inside it, and `"FORCE": true` when replacing. A
///   datahold that is not an object (a dumb device's raw config) goes as is: there is nowhere
///   to put the meta keys.
pub fn cup_payload(
    profile: ClientProfile,
    datahold: &Value,
    task_id: &str,
    hash: &str,
    overwrite: bool,
    timestamp: i64,
) -> Value {
    let datahold = match (profile, datahold) {
        (ClientProfile::Reference, Value::Object(map)) => {
            let mut map = map.clone();
            for key in META_KEYS {
                map.remove(key);
            }
            map.insert("task_id".into(), task_id.into());
            map.insert("hash".into(), hash.into());
            if overwrite {
                map.insert("FORCE".into(), true.into());
            }
            Value::Object(map)
        }
        _ => datahold.clone(),
    };
    let mut payload = Map::new();
    payload.insert("timestamp".into(), timestamp.into());
    payload.insert("datahold".into(), datahold);
    payload.insert("task_id".into(), task_id.into());
    payload.insert("hash".into(), hash.into());
    if overwrite {
        payload.insert("overwrite".into(), true.into());
    }
    Value::Object(payload)
}

/// The payload of a PING: `{"timestamp": <server now>}`.
pub fn ping_payload(timestamp: i64) -> Value {
    json!({ "timestamp": timestamp })
}

/// Removes the [`META_KEYS`] from an object datahold (a reference client's SUP, or a config
/// it echoes), so that they stay out of the stored config, its hash and SUP merges. Anything
/// other than an object is left alone. Only the top level is touched: a nested `hash` key is
/// config.
pub fn strip_meta(datahold: &mut Value) {
    if let Value::Object(map) = datahold {
        for key in META_KEYS {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_names() {
        assert_eq!(
            "Reference".parse::<ClientProfile>(),
            Ok(ClientProfile::Reference)
        );
        assert_eq!(
            " standard ".parse::<ClientProfile>(),
            Ok(ClientProfile::Standard)
        );
        let e = "python".parse::<ClientProfile>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown client profile \"python\", expected \"standard\" or \"reference\""
        );
        for p in ClientProfile::ALL {
            assert_eq!(p.to_string().parse::<ClientProfile>(), Ok(p));
            assert_eq!(
                serde_json::to_value(p).unwrap(),
                Value::String(p.as_str().into())
            );
            assert_eq!(
                serde_json::from_value::<ClientProfile>(Value::String(p.as_str().into())).unwrap(),
                p
            );
        }
        assert_eq!(ClientProfile::default(), ClientProfile::Standard);
    }

    #[test]
    fn standard_cup() {
        let d = json!({"closed": true, "hash": "config key for a standard client"});
        assert_eq!(
            cup_payload(ClientProfile::Standard, &d, "t-1", "h", false, 7),
            json!({"timestamp": 7, "datahold": d, "task_id": "t-1", "hash": "h"})
        );
        assert_eq!(
            cup_payload(ClientProfile::Standard, &d, "t-1", "h", true, 7),
            json!({"timestamp": 7, "datahold": d, "task_id": "t-1", "hash": "h", "overwrite": true})
        );
    }

    #[test]
    fn reference_cup() {
        let d = json!({"closed": true, "FORCE": true, "task_id": "stale"});
        assert_eq!(
            cup_payload(ClientProfile::Reference, &d, "t-2", "h", false, 7),
            json!({
                "timestamp": 7,
                "datahold": {"closed": true, "task_id": "t-2", "hash": "h"},
                "task_id": "t-2",
                "hash": "h",
            })
        );
        assert_eq!(
            cup_payload(ClientProfile::Reference, &d, "t-2", "h", true, 7),
            json!({
                "timestamp": 7,
                "datahold": {"closed": true, "task_id": "t-2", "hash": "h", "FORCE": true},
                "task_id": "t-2",
                "hash": "h",
                "overwrite": true,
            })
        );
    }

    #[test]
    fn reference_cup_with_a_non_object_datahold() {
        for d in [json!("FF0000/3000/C"), json!([1, 2]), json!(5)] {
            assert_eq!(
                cup_payload(ClientProfile::Reference, &d, "t", "h", true, 1)["datahold"],
                d
            );
        }
    }

    #[test]
    fn strip_meta_top_level_only() {
        let mut d =
            json!({"task_id": "t", "hash": "h", "FORCE": true, "force": 1, "a": {"hash": 2}});
        strip_meta(&mut d);
        assert_eq!(d, json!({"force": 1, "a": {"hash": 2}}));
        let mut s = json!("task_id");
        strip_meta(&mut s);
        assert_eq!(s, json!("task_id"));
    }

    #[test]
    fn ping() {
        assert_eq!(
            ping_payload(1716400000).to_string(),
            r#"{"timestamp":1716400000}"#
        );
    }
}
