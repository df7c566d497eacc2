//! Who may talk to the MQTT broker: credentials, and the topic rules every client is held to.
//!
//! A credential belongs to a [`Subject`]: one device (`<type>/<id>`), a whole type (a fleet of
//! identical devices flashed with one secret), or an observer (read-only, for debugging). The
//! broker asks [`may_publish`] and [`may_subscribe`] for every PUBLISH and every SUBSCRIBE
//! filter; both are pure functions of the topic and of who logged in ([`Principal`]).
//!
//! The rules, for every client (anonymous ones included, when `--mqtt-auth off`):
//! - Server topics (`<type>/…`, everything not under `ask/`) are published by gatehouse only;
//!   a client publishes under `ask/` only: a device under `ask/<its type>/<its id>/…`, a type
//!   credential under `ask/<its type>/…`, an anonymous client (auth off) anywhere under
//!   `ask/`, an observer nowhere.
//! - A client subscribes only under a literal type: never `#`, `+/…`, `ask/…` or `$…`. A
//!   device: `<its type>/all/…` and `<its type>/<its id>/…`; a type credential: `<its
//!   type>/…`; an anonymous client: any literal type. An observer may subscribe to anything.
//! - `gatehouse-bench/…`, where `bench skaben` measures the broker's own rate, is open to
//!   anonymous clients only (publish and subscribe); gatehouse never publishes there.
//!
//! Secrets are stored hashed ([`hash_generated`], [`hash_chosen`]): a generated password
//! (192 random bits) as SHA-256, which is enough for a secret that cannot be guessed and costs
//! nothing at a reconnect storm; a password an operator chose (a fleet's existing shared
//! secret) with Argon2id, because it may be guessable.

use std::fmt;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::change::{Effects, State};
use super::event::{Event, SERVER};
use super::{CoreError, Outcome, clip_text, invalid};
use crate::store::{CredentialRecord, StoreError, Write};

/// The topic prefix of device → server packets.
const ASK: &str = "ask";
/// Where `bench skaben` measures the broker's own rate (publish → receive on a topic of its
/// own): open to anonymous clients (`--mqtt-auth off`) only. gatehouse never publishes there.
pub const BENCH_NAMESPACE: &str = "gatehouse-bench";

/// Longest username or chosen password accepted.
pub const MAX_SECRET_LEN: usize = 256;
/// Shortest password an operator may choose for a type credential.
pub const MIN_CHOSEN_PASSWORD: usize = 8;

/// What a credential lets a client act as.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Subject {
    /// One device: `<type>/<id>`.
    Device { r#type: String, id: String },
    /// Every device of a type.
    Type { r#type: String },
    /// Read-only access to every topic (issued by an admin, for debugging).
    Observer { name: String },
}

impl Subject {
    /// The identity the broker carries for a session (its "user id"): `device:<type>/<id>`,
    /// `type:<type>` or `observer:<name>`.
    pub fn key(&self) -> String {
        match self {
            Subject::Device { r#type, id } => format!("device:{type}/{id}"),
            Subject::Type { r#type } => format!("type:{type}"),
            Subject::Observer { name } => format!("observer:{name}"),
        }
    }

    /// The inverse of [`Subject::key`].
    pub fn parse(key: &str) -> Option<Subject> {
        let (kind, rest) = key.split_once(':')?;
        match kind {
            "device" => {
                let (ty, id) = rest.split_once('/')?;
                Some(Subject::Device {
                    r#type: ty.to_string(),
                    id: id.to_string(),
                })
            }
            "type" => Some(Subject::Type {
                r#type: rest.to_string(),
            }),
            "observer" => Some(Subject::Observer {
                name: rest.to_string(),
            }),
            _ => None,
        }
    }

    /// The device key an event about this credential is filed under.
    pub fn device_key(&self) -> Option<String> {
        match self {
            Subject::Device { r#type, id } => Some(format!("{type}/{id}")),
            _ => None,
        }
    }

    /// The device type it belongs to, if any.
    pub fn device_type(&self) -> Option<&str> {
        match self {
            Subject::Device { r#type, .. } | Subject::Type { r#type } => Some(r#type),
            Subject::Observer { .. } => None,
        }
    }

    /// The username a generated credential gets: `<type>/<id>`, `<type>`, `observer/<name>`.
    pub fn default_username(&self) -> String {
        match self {
            Subject::Device { r#type, id } => format!("{type}/{id}"),
            Subject::Type { r#type } => r#type.clone(),
            Subject::Observer { name } => format!("observer/{name}"),
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

/// Who a session is, for the topic rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No credential (only with `--mqtt-auth off`).
    Anonymous,
    Subject(Subject),
}

impl Principal {
    /// From the broker's user id (a [`Subject::key`]); an unknown one gets no rights beyond
    /// an anonymous client's.
    pub fn of(user_id: Option<&str>) -> Principal {
        match user_id.and_then(Subject::parse) {
            Some(s) => Principal::Subject(s),
            None => Principal::Anonymous,
        }
    }
}

/// One stored credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub subject: Subject,
    /// `sha256$<hex>` (generated) or an Argon2id PHC string (chosen).
    pub hash: String,
    pub created_at: i64,
}

/// Whether `p` may publish to `topic`.
pub fn may_publish(p: &Principal, topic: &str) -> bool {
    let mut levels = topic.split('/');
    let Some(first) = levels.next() else {
        return false;
    };
    if first == BENCH_NAMESPACE {
        return *p == Principal::Anonymous;
    }
    if !first.eq_ignore_ascii_case(ASK) || topic.contains(['#', '+']) {
        return false;
    }
    let (ty, id) = (levels.next(), levels.next());
    match p {
        Principal::Anonymous => ty.is_some_and(|t| !t.is_empty()),
        Principal::Subject(Subject::Device { r#type, id: own }) => {
            ty.is_some_and(|t| t.eq_ignore_ascii_case(r#type))
                && id.is_some_and(|i| i.eq_ignore_ascii_case(own))
                && levels.next().is_some()
        }
        Principal::Subject(Subject::Type { r#type }) => {
            ty.is_some_and(|t| t.eq_ignore_ascii_case(r#type))
                && id.is_some()
                && levels.next().is_some()
        }
        Principal::Subject(Subject::Observer { .. }) => false,
    }
}

/// Whether `p` may subscribe to `filter` (a shared subscription `$share/<group>/<filter>` is
/// judged by its filter).
pub fn may_subscribe(p: &Principal, filter: &str) -> bool {
    if matches!(p, Principal::Subject(Subject::Observer { .. })) {
        return true;
    }
    let filter = match filter.strip_prefix("$share/") {
        Some(rest) => match rest.split_once('/') {
            Some((_, f)) => f,
            None => return false,
        },
        None => filter,
    };
    let mut levels = filter.split('/');
    let first = levels.next().unwrap_or("");
    if first.is_empty()
        || first.contains(['#', '+'])
        || first.starts_with('$')
        || first.eq_ignore_ascii_case(ASK)
    {
        return false;
    }
    let second = levels.next();
    if first == BENCH_NAMESPACE {
        return *p == Principal::Anonymous;
    }
    match p {
        Principal::Anonymous | Principal::Subject(Subject::Observer { .. }) => true,
        Principal::Subject(Subject::Type { r#type }) => first.eq_ignore_ascii_case(r#type),
        Principal::Subject(Subject::Device { r#type, id }) => {
            first.eq_ignore_ascii_case(r#type)
                && second
                    .is_some_and(|s| s.eq_ignore_ascii_case("all") || s.eq_ignore_ascii_case(id))
        }
    }
}

/// A new random password (192 bits, hex) and its stored hash.
pub fn generate_password() -> (String, String) {
    let bytes: [u8; 24] = rand::random();
    let password: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let hash = hash_generated(&password);
    (password, hash)
}

/// The stored form of a generated password.
pub fn hash_generated(password: &str) -> String {
    format!("sha256${}", hex(&Sha256::digest(password.as_bytes())))
}

/// The stored form of a password an operator chose: Argon2id (the crate's default cost).
pub fn hash_chosen(password: &str) -> Result<String, String> {
    let salt: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether checking `hash` is slow (Argon2id): the broker runs those off its tasks, one at a
/// time, and remembers a success.
pub fn is_slow(hash: &str) -> bool {
    !hash.starts_with("sha256$")
}

/// Whether `password` matches the stored `hash`.
pub fn verify(password: &[u8], hash: &str) -> bool {
    if let Some(want) = hash.strip_prefix("sha256$") {
        let got = hex(&Sha256::digest(password));
        return constant_time_eq(got.as_bytes(), want.as_bytes());
    }
    match PasswordHash::new(hash) {
        Ok(parsed) => argon2::Argon2::default()
            .verify_password(password, &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A fingerprint of a (hash, password) pair that verified, kept in memory so that a device
/// reconnecting with a chosen password is not checked with Argon2id again.
pub fn fingerprint(hash: &str, password: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(hash.as_bytes());
    h.update([0u8]);
    h.update(password);
    h.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether two secrets are equal, in a time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks a username an operator chose: printable ASCII without spaces, no MQTT wildcards.
pub fn check_username(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_SECRET_LEN {
        return Err(format!("must be 1 to {MAX_SECRET_LEN} characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'#' && b != b'+')
    {
        return Err("may hold printable ASCII without spaces, '#' or '+' only".into());
    }
    Ok(())
}

/// Checks a password an operator chose.
pub fn check_chosen_password(password: &str) -> Result<(), String> {
    let n = password.chars().count();
    if !(MIN_CHOSEN_PASSWORD..=MAX_SECRET_LEN).contains(&n) {
        return Err(format!(
            "must be {MIN_CHOSEN_PASSWORD} to {MAX_SECRET_LEN} characters"
        ));
    }
    Ok(())
}

/// Checks an observer's name.
pub fn check_observer_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err("must be 1 to 64 letters, digits, '-' or '_'".into());
    }
    Ok(())
}

/// A Mosquitto `acl_file` doing what the embedded broker does, for these credentials and the
/// user gatehouse itself logs in as (`server_user`, from `--mqtt-url`).
pub fn mosquitto_acl(server_user: &str, credentials: &[Credential]) -> String {
    let mut out = String::from(
        "# Mosquitto acl_file for gatehouse (generated by `gatehouse mqtt acl`).\n\
         # Clients not listed here get nothing: keep allow_anonymous false.\n\n",
    );
    out.push_str(&format!(
        "# gatehouse itself: reads what devices send, publishes to devices.\nuser {server_user}\ntopic read ask/#\ntopic read ASK/#\ntopic write #\n\n"
    ));
    let mut creds: Vec<&Credential> = credentials.iter().collect();
    creds.sort_by(|a, b| a.username.cmp(&b.username));
    for c in creds {
        out.push_str(&format!("# {}\nuser {}\n", c.subject, c.username));
        match &c.subject {
            Subject::Device { r#type, id } => out.push_str(&format!(
                "topic write ask/{type}/{id}/#\ntopic read {type}/all/#\ntopic read {type}/{id}/#\n"
            )),
            Subject::Type { r#type } => {
                out.push_str(&format!("topic write ask/{type}/#\ntopic read {type}/#\n"))
            }
            Subject::Observer { .. } => out.push_str("topic read #\n"),
        }
        out.push('\n');
    }
    out
}

// ---- the credentials in the state ----

/// A credential as the API shows it (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CredentialView {
    pub username: String,
    pub subject: Subject,
    pub created_at: i64,
    /// Generated by the server (else chosen by the operator).
    pub generated: bool,
}

impl Credential {
    pub fn view(&self) -> CredentialView {
        CredentialView {
            username: self.username.clone(),
            subject: self.subject.clone(),
            created_at: self.created_at,
            generated: !is_slow(&self.hash),
        }
    }

    fn record(&self) -> CredentialRecord {
        CredentialRecord {
            username: self.username.clone(),
            subject: self.subject.key(),
            hash: self.hash.clone(),
            created_at: self.created_at,
        }
    }

    /// A stored row back into a credential.
    pub fn load(r: CredentialRecord) -> Result<Credential, StoreError> {
        let subject = Subject::parse(&r.subject).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "credential {:?}: unknown subject {:?}",
                r.username, r.subject
            ))
        })?;
        Ok(Credential {
            username: r.username,
            subject,
            hash: r.hash,
            created_at: r.created_at,
        })
    }
}

impl State {
    /// The credential logged in with `username`.
    pub fn credential(&self, username: &str) -> Option<&Credential> {
        self.credentials.get(username)
    }

    /// The credential of `subject`.
    pub fn credential_of(&self, subject: &Subject) -> Option<&Credential> {
        self.credentials.values().find(|c| &c.subject == subject)
    }

    /// Every credential, by username.
    pub fn credentials(&self) -> Vec<CredentialView> {
        let mut v: Vec<CredentialView> = self.credentials.values().map(Credential::view).collect();
        v.sort_by(|a, b| a.username.cmp(&b.username));
        v
    }

    /// Issues (or rotates) `subject`'s credential. The hash is computed by the caller, outside
    /// the state lock (Argon2id takes tens of milliseconds).
    pub(crate) fn issue_credential(
        &mut self,
        fx: &mut Effects,
        subject: Subject,
        username: String,
        hash: String,
        actor: &str,
    ) -> Result<Outcome, CoreError> {
        check_username(&username).map_err(|r| invalid("username", r))?;
        if let Some(ty) = subject.device_type()
            && !self.types.contains_key(ty)
        {
            return Err(CoreError::NotFound(format!("no device type {ty:?}")));
        }
        if let Some(other) = self.credentials.get(&username)
            && other.subject != subject
        {
            return Err(CoreError::Conflict(format!(
                "the username {username:?} is already used by {}",
                other.subject
            )));
        }
        let previous = self.credential_of(&subject).map(|c| c.username.clone());
        let rotated = previous.is_some();
        if let Some(old) = previous {
            self.credentials.remove(&old);
            if old != username {
                fx.writes.push(Write::DeleteCredential(old));
            }
            fx.disconnects.push(subject.key());
        }
        let cred = Credential {
            username: username.clone(),
            subject: subject.clone(),
            hash,
            created_at: fx.now,
        };
        fx.writes.push(Write::Credential(cred.record()));
        let view = cred.view();
        fx.event(
            subject.device_key(),
            actor,
            Event::CredentialIssued {
                username: username.clone(),
                subject: subject.key(),
                generated: view.generated,
                rotated,
            },
        );
        self.credentials.insert(username, cred);
        Ok(Outcome::Credential { view, rotated })
    }

    /// Revokes `subject`'s credential and disconnects its sessions.
    pub(crate) fn revoke_credential(
        &mut self,
        fx: &mut Effects,
        subject: Subject,
        actor: &str,
    ) -> Result<Outcome, CoreError> {
        let Some(username) = self.credential_of(&subject).map(|c| c.username.clone()) else {
            return Err(CoreError::NotFound(format!("{subject} has no credential")));
        };
        self.credentials.remove(&username);
        fx.writes.push(Write::DeleteCredential(username.clone()));
        fx.disconnects.push(subject.key());
        fx.event(
            subject.device_key(),
            actor,
            Event::CredentialRevoked {
                username,
                subject: subject.key(),
            },
        );
        Ok(Outcome::Revoked)
    }

    /// Something the broker refused: counted, and an event at most once a minute per client
    /// (per address for logins).
    pub(crate) fn mqtt_refused(&mut self, fx: &mut Effects, r: Refusal) {
        match r.action {
            "connect" => fx.counts.mqtt_refused_logins += 1,
            "publish" => fx.counts.mqtt_refused_publishes += 1,
            _ => fx.counts.mqtt_refused_subscribes += 1,
        }
        let key = match (&r.addr, r.action) {
            (Some(addr), "connect") => format!("mqtt-login:{addr}"),
            _ => format!("mqtt:{}", r.client_id),
        };
        let Some(refused_since) = self.rejected_event_due(&key, fx.now) else {
            return;
        };
        let device = match Principal::of(r.user.as_deref()) {
            Principal::Subject(s) => s.device_key(),
            Principal::Anonymous => None,
        };
        fx.wait = false;
        fx.event(
            device,
            SERVER,
            Event::MqttRefused {
                action: r.action.to_string(),
                reason: r.reason.to_string(),
                client_id: clip_text(&r.client_id, 128),
                user: r.user,
                topic: r.topic.map(|t| clip_text(&t, 256)),
                addr: r.addr,
                refused_since,
            },
        );
    }
}

/// One refusal by the broker, for [`State::mqtt_refused`].
#[derive(Debug, Clone)]
pub struct Refusal {
    /// `connect`, `publish` or `subscribe`.
    pub action: &'static str,
    pub reason: &'static str,
    pub client_id: String,
    pub user: Option<String>,
    pub topic: Option<String>,
    pub addr: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> Principal {
        Principal::Subject(Subject::Device {
            r#type: "lock".into(),
            id: "b827eb0a1b2c".into(),
        })
    }

    fn fleet() -> Principal {
        Principal::Subject(Subject::Type {
            r#type: "lock".into(),
        })
    }

    fn observer() -> Principal {
        Principal::Subject(Subject::Observer { name: "dbg".into() })
    }

    #[test]
    fn publish_rules() {
        let own = "ask/lock/b827eb0a1b2c/sup";
        let cases: &[(&str, [bool; 4])] = &[
            // topic: [device, type credential, anonymous, observer]
            (own, [true, true, true, false]),
            ("ASK/LOCK/B827EB0A1B2C/pong", [true, true, true, false]),
            ("ask/lock/000000000001/sup", [false, true, true, false]),
            ("ask/lock/all/cup", [false, true, true, false]),
            ("ask/rgb/b827eb0a1b2c/sup", [false, false, true, false]),
            ("lock/all/cup", [false, false, false, false]),
            ("lock/b827eb0a1b2c/cup", [false, false, false, false]),
            ("ask", [false, false, false, false]),
            ("ask/lock/b827eb0a1b2c", [false, false, true, false]),
            ("anything/else", [false, false, false, false]),
            ("gatehouse-bench/1/echo", [false, false, true, false]),
        ];
        for (topic, want) in cases {
            let got = [device(), fleet(), Principal::Anonymous, observer()]
                .map(|p| may_publish(&p, topic));
            assert_eq!(&got, want, "publish {topic}");
        }
    }

    #[test]
    fn subscribe_rules() {
        let cases: &[(&str, [bool; 4])] = &[
            ("lock/b827eb0a1b2c/#", [true, true, true, true]),
            ("lock/all/#", [true, true, true, true]),
            ("lock/all/ping", [true, true, true, true]),
            ("lock/+/cup", [false, true, true, true]),
            ("lock/#", [false, true, true, true]),
            ("lock/000000000001/#", [false, true, true, true]),
            ("rgb/all/#", [false, false, true, true]),
            ("#", [false, false, false, true]),
            ("+/all/cup", [false, false, false, true]),
            ("ask/#", [false, false, false, true]),
            ("ASK/lock/#", [false, false, false, true]),
            ("$SYS/#", [false, false, false, true]),
            ("$share/g/lock/all/#", [true, true, true, true]),
            ("$share/g/#", [false, false, false, true]),
            ("", [false, false, false, true]),
            ("gatehouse-bench/1/echo", [false, false, true, true]),
        ];
        for (filter, want) in cases {
            let got = [device(), fleet(), Principal::Anonymous, observer()]
                .map(|p| may_subscribe(&p, filter));
            assert_eq!(&got, want, "subscribe {filter}");
        }
    }

    #[test]
    fn subject_keys_round_trip() {
        for s in [
            Subject::Device {
                r#type: "lock".into(),
                id: "b827eb0a1b2c".into(),
            },
            Subject::Type {
                r#type: "rgb".into(),
            },
            Subject::Observer { name: "dbg".into() },
        ] {
            assert_eq!(Subject::parse(&s.key()), Some(s.clone()));
        }
        assert_eq!(Principal::of(Some("nonsense")), Principal::Anonymous);
        assert_eq!(Principal::of(None), Principal::Anonymous);
    }

    #[test]
    fn hashes_verify_only_their_password() {
        let (pw, hash) = generate_password();
        assert_eq!(pw.len(), 48);
        assert!(!is_slow(&hash));
        assert!(verify(pw.as_bytes(), &hash));
        assert!(!verify(b"wrong", &hash));
        let chosen = hash_chosen("shared-secret-1").unwrap();
        assert!(is_slow(&chosen) && chosen.starts_with("$argon2id$"));
        assert!(verify(b"shared-secret-1", &chosen));
        assert!(!verify(b"shared-secret-2", &chosen));
        assert!(!verify(b"x", "garbage"));
        assert_ne!(
            fingerprint(&chosen, b"shared-secret-1"),
            fingerprint(&chosen, b"shared-secret-2")
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(check_username("lock/b827eb0a1b2c").is_ok());
        assert!(check_username("with space").is_err());
        assert!(check_username("a#").is_err());
        assert!(check_username("").is_err());
        assert!(check_chosen_password("short").is_err());
        assert!(check_chosen_password("long enough").is_ok());
        assert!(check_observer_name("dbg-1").is_ok());
        assert!(check_observer_name("a/b").is_err());
    }

    #[test]
    fn mosquitto_acl_lists_every_credential() {
        let c = |username: &str, subject| Credential {
            username: username.into(),
            subject,
            hash: String::new(),
            created_at: 0,
        };
        let acl = mosquitto_acl(
            "gatehouse",
            &[
                c(
                    "lock/b827eb0a1b2c",
                    Subject::Device {
                        r#type: "lock".into(),
                        id: "b827eb0a1b2c".into(),
                    },
                ),
                c(
                    "rgb",
                    Subject::Type {
                        r#type: "rgb".into(),
                    },
                ),
            ],
        );
        assert!(acl.contains("user gatehouse\ntopic read ask/#\n"));
        assert!(acl.contains(
            "user lock/b827eb0a1b2c\ntopic write ask/lock/b827eb0a1b2c/#\ntopic read lock/all/#\ntopic read lock/b827eb0a1b2c/#\n"
        ));
        assert!(acl.contains("user rgb\ntopic write ask/rgb/#\ntopic read rgb/#\n"));
    }
}
