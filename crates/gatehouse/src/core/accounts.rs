//! Who may use the console: accounts (a name, an Argon2id password hash, a role), API tokens
//! (named, with a role and an optional expiry, stored hashed) and browser sessions (only the
//! hash of the cookie's secret is kept).
//!
//! Invariants:
//! - Every change is made through [`crate::core::Hub::change`] and records an event naming
//!   who made it: the audit log of who may do what. No event, row or log line holds a
//!   password, a token or a session secret; rows hold their hashes.
//! - There is always at least one admin: the last one can be neither removed nor demoted,
//!   so the crew can never lock itself out.
//! - A role is looked up on every request (a session and a token point at their role, or at
//!   their account's), so a demotion, a removal or a revocation takes effect on the next
//!   request. A password change ends the account's sessions.
//! - Password hashing and checking are slow on purpose and are done outside the state's lock
//!   (by the caller, off the async tasks); what reaches the state is a hash.
//! - The last use of a token and a session is kept in memory on every request and written at
//!   most once a minute (`SEEN_WRITE_MS`), so a busy console does not write on every click.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::change::{Effects, State};
use super::event::Event;
use super::{CoreError, invalid};
use crate::store::{StoreError, Write};

/// What an account or a token may do. Ordered: each role may do what the ones below it may.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees everything, changes nothing.
    Viewer,
    /// Runs the venue: devices, cells, configs, the game.
    Operator,
    /// Also manages accounts, tokens, credentials, device types and rules.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Result<Role, CoreError> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(invalid(
                "role",
                format!("{other:?} is not a role (viewer, operator or admin)"),
            )),
        }
    }
}

/// The prefix of every API token, so a leaked one is recognisable (and scannable).
pub const TOKEN_PREFIX: &str = "gh_";
/// A token's or a session's last use is written at most this often (ms).
pub const SEEN_WRITE_MS: i64 = 60_000;
/// Sessions kept per account: a new login past this ends the account's oldest session.
pub const SESSIONS_PER_USER: usize = 20;
/// Accounts at most (a bound on what an admin's script can make the server hold).
pub const USERS_MAX: usize = 1000;
/// API tokens at most.
pub const TOKENS_MAX: usize = 1000;

/// A console account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub role: Role,
    /// Argon2id (PHC string).
    pub hash: String,
    pub created_at: i64,
    pub password_changed_at: i64,
}

/// An API token: its secret is shown once, at creation; only its SHA-256 is kept (the
/// secret is 256 random bits, so a fast hash is enough).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiToken {
    pub name: String,
    pub role: Role,
    /// Hex SHA-256 of the secret.
    pub hash: String,
    pub created_at: i64,
    pub created_by: String,
    pub expires_at: Option<i64>,
    pub last_used: Option<i64>,
}

/// A browser session: the cookie holds a 256-bit secret, the server its SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// Hex SHA-256 of the cookie's secret.
    pub hash: String,
    pub user: String,
    pub created_at: i64,
    pub last_seen: i64,
    /// The address and browser it logged in from (what an admin sees to recognise it).
    pub addr: String,
    pub agent: String,
    /// When `last_seen` was last written.
    #[serde(skip)]
    pub written_seen: i64,
}

impl Session {
    /// Notes a use now; the row is written at most once per [`SEEN_WRITE_MS`].
    fn seen(&mut self, fx: &mut Effects) {
        self.last_seen = fx.now;
        if fx.now - self.written_seen >= SEEN_WRITE_MS {
            self.written_seen = fx.now;
            fx.writes.push(row(session_key(&self.hash), &*self));
        }
    }

    /// The id an admin sees and revokes by: the first 16 hex digits of the hash (the hash
    /// itself does not let anyone in, but it need not be shown whole).
    pub fn id(&self) -> &str {
        &self.hash[..16.min(self.hash.len())]
    }
}

/// How long a session lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionPolicy {
    /// Ended after this long without a request (ms).
    pub idle_ms: i64,
    /// Ended this long after the login, however busy (ms).
    pub max_ms: i64,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        SessionPolicy {
            idle_ms: 12 * 3_600_000,
            max_ms: 7 * 86_400_000,
        }
    }
}

impl SessionPolicy {
    /// When a session ends if nothing more happens.
    pub fn expires_at(&self, s: &Session) -> i64 {
        (s.last_seen + self.idle_ms).min(s.created_at + self.max_ms)
    }
}

/// Who a request acts as, once its credentials are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The name recorded as the actor of what it changes: the account's name, `token:<name>`
    /// for an API token, `admin` for the bootstrap admin token.
    pub actor: String,
    pub role: Role,
    /// The account, for a session.
    pub user: Option<String>,
    /// The session's id, for a session.
    pub session: Option<String>,
}

/// Accounts, tokens and sessions.
#[derive(Debug, Clone, Default)]
pub struct Accounts {
    pub(crate) users: BTreeMap<String, User>,
    pub(crate) tokens: BTreeMap<String, ApiToken>,
    /// Token hash → name.
    token_by_hash: HashMap<String, String>,
    /// Session hash → session.
    pub(crate) sessions: HashMap<String, Session>,
}

/// Hex SHA-256 of a secret (a token's or a session's).
pub fn secret_hash(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new secret: 256 random bits, hex, behind `prefix`.
pub fn new_secret(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{hex}")
}

/// A generated password: 20 characters a person can read out and type (no 0/O, 1/l/I),
/// about 110 bits.
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    (0..20)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Checks an account's or a token's name: 1 to 64 of `a-z A-Z 0-9 . _ -`, not starting
/// with `-` or `.`.
pub fn check_name(field: &'static str, name: &str) -> Result<(), CoreError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !name.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!(
                "{name:?}: 1 to 64 letters, digits, '.', '_' or '-', not starting with '.' or '-'"
            ),
        ))
    }
}

/// Checks a password a person chose: 8 to 256 characters.
pub fn check_password(password: &str) -> Result<(), CoreError> {
    super::access::check_chosen_password(password).map_err(|e| invalid("password", e))
}

fn user_key(name: &str) -> String {
    format!("user:{name}")
}
fn token_key(name: &str) -> String {
    format!("token:{name}")
}
fn session_key(hash: &str) -> String {
    format!("session:{hash}")
}

fn row<T: Serialize>(key: String, v: &T) -> Write {
    Write::Account {
        key,
        data: Some(serde_json::to_string(v).unwrap_or_default()),
    }
}

fn gone(key: String) -> Write {
    Write::Account { key, data: None }
}

impl Accounts {
    /// Rebuilds from the store's rows (`user:…`, `token:…`, `session:…`).
    pub fn load(rows: Vec<(String, String)>) -> Result<Accounts, StoreError> {
        let mut a = Accounts::default();
        for (key, data) in rows {
            let corrupt =
                |e: serde_json::Error| StoreError::Corrupt(format!("account row {key}: {e}"));
            if key.starts_with("user:") {
                let u: User = serde_json::from_str(&data).map_err(corrupt)?;
                a.users.insert(u.name.clone(), u);
            } else if key.starts_with("token:") {
                let t: ApiToken = serde_json::from_str(&data).map_err(corrupt)?;
                a.token_by_hash.insert(t.hash.clone(), t.name.clone());
                a.tokens.insert(t.name.clone(), t);
            } else if key.starts_with("session:") {
                let mut s: Session = serde_json::from_str(&data).map_err(corrupt)?;
                s.written_seen = s.last_seen;
                a.sessions.insert(s.hash.clone(), s);
            } else {
                return Err(StoreError::Corrupt(format!("unknown account row {key}")));
            }
        }
        Ok(a)
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }

    pub fn tokens(&self) -> impl Iterator<Item = &ApiToken> {
        self.tokens.values()
    }

    /// Sessions, newest first.
    pub fn sessions(&self) -> Vec<&Session> {
        let mut v: Vec<&Session> = self.sessions.values().collect();
        v.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.hash.cmp(&b.hash)));
        v
    }

    fn admins(&self) -> usize {
        self.users
            .values()
            .filter(|u| u.role == Role::Admin)
            .count()
    }

    fn end_sessions_of(&mut self, fx: &mut Effects, user: &str, reason: &str, actor: &str) {
        let ended: Vec<String> = self
            .sessions
            .values()
            .filter(|s| s.user == user)
            .map(|s| s.hash.clone())
            .collect();
        for h in ended {
            if let Some(s) = self.sessions.remove(&h) {
                fx.writes.push(gone(session_key(&h)));
                fx.event(
                    None,
                    actor,
                    Event::SessionEnded {
                        user: s.user.clone(),
                        session: s.id().to_string(),
                        reason: reason.to_string(),
                    },
                );
            }
        }
    }
}

impl State {
    pub fn accounts(&self) -> &Accounts {
        &self.accounts
    }

    /// Adds an account. `hash` is the password's Argon2id hash.
    pub fn user_add(
        &mut self,
        fx: &mut Effects,
        name: &str,
        role: Role,
        hash: String,
        actor: &str,
    ) -> Result<User, CoreError> {
        check_name("name", name)?;
        let a = &mut self.accounts;
        if a.users.contains_key(name) {
            return Err(CoreError::Conflict(format!(
                "an account {name:?} exists (change its password or role instead)"
            )));
        }
        if a.users.len() >= USERS_MAX {
            return Err(invalid("name", format!("at most {USERS_MAX} accounts")));
        }
        let u = User {
            name: name.to_string(),
            role,
            hash,
            created_at: fx.now,
            password_changed_at: fx.now,
        };
        fx.writes.push(row(user_key(name), &u));
        fx.event(
            None,
            actor,
            Event::UserAdded {
                name: name.to_string(),
                role: role.as_str().into(),
            },
        );
        a.users.insert(name.to_string(), u.clone());
        Ok(u)
    }

    /// Changes an account's role and/or password (`hash`). A new password ends its sessions.
    pub fn user_change(
        &mut self,
        fx: &mut Effects,
        name: &str,
        role: Option<Role>,
        hash: Option<String>,
        actor: &str,
    ) -> Result<User, CoreError> {
        let a = &mut self.accounts;
        let admins = a.admins();
        let Some(u) = a.users.get_mut(name) else {
            return Err(CoreError::NotFound(format!(
                "no account {name:?} (GET /api/users lists them)"
            )));
        };
        let from = u.role;
        if let Some(r) = role
            && from == Role::Admin
            && r != Role::Admin
            && admins <= 1
        {
            return Err(CoreError::Conflict(format!(
                "{name:?} is the last admin: make another account admin first"
            )));
        }
        if let Some(r) = role {
            u.role = r;
        }
        let password_changed = hash.is_some();
        if let Some(h) = hash {
            u.hash = h;
            u.password_changed_at = fx.now;
        }
        let u = u.clone();
        fx.writes.push(row(user_key(name), &u));
        fx.event(
            None,
            actor,
            Event::UserChanged {
                name: name.to_string(),
                role_from: from.as_str().into(),
                role_to: u.role.as_str().into(),
                password_changed,
            },
        );
        if password_changed {
            a.end_sessions_of(fx, name, "password changed", actor);
        }
        Ok(u)
    }

    /// Removes an account and ends its sessions.
    pub fn user_remove(
        &mut self,
        fx: &mut Effects,
        name: &str,
        actor: &str,
    ) -> Result<User, CoreError> {
        let a = &mut self.accounts;
        let Some(role) = a.users.get(name).map(|u| u.role) else {
            return Err(CoreError::NotFound(format!(
                "no account {name:?} (GET /api/users lists them)"
            )));
        };
        if role == Role::Admin && a.admins() <= 1 {
            return Err(CoreError::Conflict(format!(
                "{name:?} is the last admin: make another account admin first"
            )));
        }
        let Some(u) = a.users.remove(name) else {
            return Err(CoreError::NotFound(format!("no account {name:?}")));
        };
        fx.writes.push(gone(user_key(name)));
        fx.event(
            None,
            actor,
            Event::UserRemoved {
                name: name.to_string(),
                role: u.role.as_str().into(),
            },
        );
        a.end_sessions_of(fx, name, "account removed", actor);
        Ok(u)
    }

    /// Creates an API token whose secret hashes to `hash`.
    pub fn token_create(
        &mut self,
        fx: &mut Effects,
        name: &str,
        role: Role,
        expires_at: Option<i64>,
        hash: String,
        actor: &str,
    ) -> Result<ApiToken, CoreError> {
        check_name("name", name)?;
        if let Some(e) = expires_at
            && e <= fx.now
        {
            return Err(invalid("expires_at", "is in the past"));
        }
        let a = &mut self.accounts;
        if a.tokens.contains_key(name) {
            return Err(CoreError::Conflict(format!(
                "a token {name:?} exists (revoke it first, or choose another name)"
            )));
        }
        if a.tokens.len() >= TOKENS_MAX {
            return Err(invalid("name", format!("at most {TOKENS_MAX} tokens")));
        }
        let t = ApiToken {
            name: name.to_string(),
            role,
            hash,
            created_at: fx.now,
            created_by: actor.to_string(),
            expires_at,
            last_used: None,
        };
        fx.writes.push(row(token_key(name), &t));
        fx.event(
            None,
            actor,
            Event::TokenCreated {
                name: name.to_string(),
                role: role.as_str().into(),
                expires_at: expires_at.map(crate::clock::rfc3339),
            },
        );
        a.token_by_hash.insert(t.hash.clone(), t.name.clone());
        a.tokens.insert(t.name.clone(), t.clone());
        Ok(t)
    }

    pub fn token_revoke(
        &mut self,
        fx: &mut Effects,
        name: &str,
        actor: &str,
    ) -> Result<ApiToken, CoreError> {
        let a = &mut self.accounts;
        let Some(t) = a.tokens.remove(name) else {
            return Err(CoreError::NotFound(format!(
                "no token {name:?} (GET /api/tokens lists them)"
            )));
        };
        a.token_by_hash.remove(&t.hash);
        fx.writes.push(gone(token_key(name)));
        fx.event(
            None,
            actor,
            Event::TokenRevoked {
                name: name.to_string(),
            },
        );
        Ok(t)
    }

    /// The identity of an API token's secret, if it is a live token; notes its use.
    pub fn token_check(&mut self, fx: &mut Effects, secret: &str) -> Option<Identity> {
        let a = &mut self.accounts;
        let name = a.token_by_hash.get(&secret_hash(secret))?;
        let t = a.tokens.get_mut(name)?;
        if t.expires_at.is_some_and(|e| e <= fx.now) {
            return None;
        }
        let due = t.last_used.is_none_or(|u| fx.now - u >= SEEN_WRITE_MS);
        if due {
            t.last_used = Some(fx.now);
            fx.writes.push(row(token_key(&t.name), &*t));
        }
        Some(Identity {
            actor: format!("token:{}", t.name),
            role: t.role,
            user: None,
            session: None,
        })
    }

    /// Starts a session for `user` whose cookie secret hashes to `hash` (a login that
    /// checked the password). Past [`SESSIONS_PER_USER`], the account's oldest session ends.
    pub fn session_start(
        &mut self,
        fx: &mut Effects,
        user: &str,
        hash: String,
        addr: &str,
        agent: &str,
        policy: &SessionPolicy,
    ) -> Result<Session, CoreError> {
        let now = fx.now;
        let a = &mut self.accounts;
        if !a.users.contains_key(user) {
            return Err(CoreError::NotFound(format!("no account {user:?}")));
        }
        // Ended sessions are forgotten on the way (they are refused anyway).
        let expired: Vec<String> = a
            .sessions
            .values()
            .filter(|s| policy.expires_at(s) <= now)
            .map(|s| s.hash.clone())
            .collect();
        for h in expired {
            a.sessions.remove(&h);
            fx.writes.push(gone(session_key(&h)));
        }
        let mut mine: Vec<(i64, String)> = a
            .sessions
            .values()
            .filter(|s| s.user == user)
            .map(|s| (s.created_at, s.hash.clone()))
            .collect();
        mine.sort();
        while mine.len() >= SESSIONS_PER_USER {
            let (_, h) = mine.remove(0);
            if let Some(s) = a.sessions.remove(&h) {
                fx.writes.push(gone(session_key(&h)));
                fx.event(
                    None,
                    user,
                    Event::SessionEnded {
                        user: user.to_string(),
                        session: s.id().to_string(),
                        reason: format!("more than {SESSIONS_PER_USER} sessions"),
                    },
                );
            }
        }
        let s = Session {
            hash,
            user: user.to_string(),
            created_at: now,
            last_seen: now,
            addr: super::clip_text(addr, 64),
            agent: super::clip_text(agent, 200),
            written_seen: now,
        };
        fx.writes.push(row(session_key(&s.hash), &s));
        fx.event(
            None,
            user,
            Event::LoggedIn {
                user: user.to_string(),
                session: s.id().to_string(),
                addr: s.addr.clone(),
            },
        );
        a.sessions.insert(s.hash.clone(), s.clone());
        Ok(s)
    }

    /// The identity of a session cookie's secret, if the session is live; notes its use.
    /// An ended session is forgotten.
    pub fn session_check(
        &mut self,
        fx: &mut Effects,
        secret: &str,
        policy: &SessionPolicy,
    ) -> Option<Identity> {
        let hash = secret_hash(secret);
        let a = &mut self.accounts;
        let s = a.sessions.get_mut(&hash)?;
        if policy.expires_at(s) <= fx.now {
            let user = s.user.clone();
            let id = s.id().to_string();
            a.sessions.remove(&hash);
            fx.writes.push(gone(session_key(&hash)));
            fx.event(
                None,
                super::event::SERVER,
                Event::SessionEnded {
                    user,
                    session: id,
                    reason: "expired".into(),
                },
            );
            return None;
        }
        let role = a.users.get(&s.user)?.role;
        s.seen(fx);
        Some(Identity {
            actor: s.user.clone(),
            role,
            user: Some(s.user.clone()),
            session: Some(s.id().to_string()),
        })
    }

    /// Whether `id` may still act: its session (by id) has not ended, or its token is still
    /// live (the admin token always is). A live session's use is noted (an open event stream
    /// is use: a console left open on a wall stays logged in until its session's age ends it).
    pub fn identity_live(
        &mut self,
        fx: &mut Effects,
        id: &Identity,
        policy: &SessionPolicy,
    ) -> bool {
        let a = &mut self.accounts;
        if let Some(sid) = &id.session {
            let Some(s) = a.sessions.values_mut().find(|s| s.id() == sid.as_str()) else {
                return false;
            };
            if policy.expires_at(s) <= fx.now || !a.users.contains_key(&s.user) {
                return false;
            }
            s.seen(fx);
            return true;
        }
        if let Some(name) = id.actor.strip_prefix("token:") {
            return a
                .tokens
                .get(name)
                .is_some_and(|t| t.expires_at.is_none_or(|e| e > fx.now));
        }
        true
    }

    /// Ends the session with this id (`Session::id`): a logout (`reason` "logged out") or an
    /// admin's revocation.
    pub fn session_end(
        &mut self,
        fx: &mut Effects,
        id: &str,
        reason: &str,
        actor: &str,
    ) -> Result<Session, CoreError> {
        let a = &mut self.accounts;
        let Some(hash) = a
            .sessions
            .values()
            .find(|s| s.id() == id)
            .map(|s| s.hash.clone())
        else {
            return Err(CoreError::NotFound(format!(
                "no session {id:?} (GET /api/sessions lists them)"
            )));
        };
        let s = a
            .sessions
            .remove(&hash)
            .ok_or_else(|| CoreError::NotFound(format!("no session {id:?}")))?;
        fx.writes.push(gone(session_key(&hash)));
        fx.event(
            None,
            actor,
            Event::SessionEnded {
                user: s.user.clone(),
                session: s.id().to_string(),
                reason: reason.to_string(),
            },
        );
        Ok(s)
    }

    /// Records a refused login (the caller decides how often: not while it is backing off).
    pub fn login_failed(
        &mut self,
        fx: &mut Effects,
        user: &str,
        addr: &str,
        reason: &str,
        failures: u32,
    ) {
        fx.event(
            None,
            super::event::SERVER,
            Event::LoginFailed {
                user: super::clip_text(user, 64),
                addr: super::clip_text(addr, 64),
                reason: reason.to_string(),
                failures,
            },
        );
    }
}

impl super::Hub {
    /// Reads the accounts (a snapshot of what `f` needs; the state is locked meanwhile).
    pub fn accounts_read<R>(&self, f: impl FnOnce(&Accounts) -> R) -> R {
        f(&self.lock().accounts)
    }

    /// Makes an accounts change and waits until it is durable.
    pub async fn accounts_change<R>(
        &self,
        now: i64,
        f: impl FnOnce(&mut State, &mut Effects) -> Result<R, CoreError>,
    ) -> Result<R, CoreError> {
        let (r, commit) = self.change(now, f)?;
        if let Some(c) = commit {
            c.wait().await?;
        }
        Ok(r)
    }

    /// Checks a request's credentials without waiting: what it writes (a last use, an
    /// expired session's removal) is committed in the background.
    pub fn accounts_check(
        &self,
        now: i64,
        f: impl FnOnce(&mut State, &mut Effects) -> Option<Identity>,
    ) -> Option<Identity> {
        self.change(now, |st, fx| Ok::<_, CoreError>(f(st, fx)))
            .ok()
            .and_then(|(r, _)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000_000;

    fn state() -> State {
        let cfg = crate::rules_cli::default_core_for_tests();
        State::new(cfg, T0)
    }

    fn add(st: &mut State, name: &str, role: Role) {
        let mut fx = Effects::new(T0);
        st.user_add(&mut fx, name, role, "h".into(), "test")
            .unwrap();
    }

    #[test]
    fn the_last_admin_stays() {
        let mut st = state();
        add(&mut st, "root", Role::Admin);
        let mut fx = Effects::new(T0);
        assert!(matches!(
            st.user_change(&mut fx, "root", Some(Role::Viewer), None, "test"),
            Err(CoreError::Conflict(_))
        ));
        assert!(matches!(
            st.user_remove(&mut fx, "root", "test"),
            Err(CoreError::Conflict(_))
        ));
        add(&mut st, "second", Role::Admin);
        st.user_change(&mut fx, "root", Some(Role::Viewer), None, "test")
            .unwrap();
        assert!(st.user_remove(&mut fx, "second", "test").is_err());
        st.user_remove(&mut fx, "root", "test").unwrap();
    }

    #[test]
    fn sessions_end_idle_and_at_their_age() {
        let mut st = state();
        add(&mut st, "op", Role::Operator);
        let p = SessionPolicy {
            idle_ms: 1000,
            max_ms: 5000,
        };
        let mut fx = Effects::new(T0);
        st.session_start(&mut fx, "op", secret_hash("s"), "127.0.0.1", "ua", &p)
            .unwrap();
        for t in [500, 1400, 2300, 3200, 4100, 4900] {
            let mut fx = Effects::new(T0 + t);
            let id = st.session_check(&mut fx, "s", &p);
            assert_eq!(id.map(|i| i.role), Some(Role::Operator), "at {t}");
        }
        let mut fx = Effects::new(T0 + 5000);
        assert!(st.session_check(&mut fx, "s", &p).is_none(), "too old");
        assert!(st.accounts.sessions.is_empty(), "and forgotten");
        let mut fx = Effects::new(T0);
        st.session_start(&mut fx, "op", secret_hash("t"), "a", "ua", &p)
            .unwrap();
        let mut fx = Effects::new(T0 + 1000);
        assert!(st.session_check(&mut fx, "t", &p).is_none(), "idle");
        assert!(st.session_check(&mut fx, "nope", &p).is_none());
    }

    #[test]
    fn a_password_change_ends_the_sessions_and_a_role_change_applies_at_once() {
        let mut st = state();
        add(&mut st, "root", Role::Admin);
        add(&mut st, "op", Role::Operator);
        let p = SessionPolicy::default();
        let mut fx = Effects::new(T0);
        st.session_start(&mut fx, "op", secret_hash("s"), "a", "ua", &p)
            .unwrap();
        st.user_change(&mut fx, "op", Some(Role::Viewer), None, "root")
            .unwrap();
        assert_eq!(
            st.session_check(&mut fx, "s", &p).map(|i| i.role),
            Some(Role::Viewer)
        );
        st.user_change(&mut fx, "op", None, Some("h2".into()), "root")
            .unwrap();
        assert!(st.session_check(&mut fx, "s", &p).is_none());
    }

    #[test]
    fn tokens_expire_and_their_use_is_written_once_a_minute() {
        let mut st = state();
        let mut fx = Effects::new(T0);
        let secret = new_secret(TOKEN_PREFIX);
        st.token_create(
            &mut fx,
            "ci",
            Role::Viewer,
            Some(T0 + 120_000),
            secret_hash(&secret),
            "root",
        )
        .unwrap();
        let writes = |st: &mut State, at: i64| {
            let mut fx = Effects::new(at);
            let id = st.token_check(&mut fx, &secret);
            (id.map(|i| i.actor), fx.writes.len())
        };
        assert_eq!(writes(&mut st, T0 + 1), (Some("token:ci".into()), 1));
        assert_eq!(writes(&mut st, T0 + 2), (Some("token:ci".into()), 0));
        assert_eq!(writes(&mut st, T0 + 60_001), (Some("token:ci".into()), 1));
        assert_eq!(writes(&mut st, T0 + 120_000), (None, 0), "expired");
        let mut fx = Effects::new(T0);
        assert!(st.token_check(&mut fx, "gh_other").is_none());
        st.token_revoke(&mut fx, "ci", "root").unwrap();
        assert_eq!(writes(&mut st, T0 + 3), (None, 0), "revoked");
    }

    #[test]
    fn names_and_generated_passwords() {
        for ok in ["admin", "a.b-c_d", "Z9"] {
            check_name("name", ok).unwrap();
        }
        for bad in ["", "-x", ".x", "a b", "a/b", &"x".repeat(65)] {
            assert!(check_name("name", bad).is_err(), "{bad:?}");
        }
        let p = generate_password();
        assert_eq!(p.len(), 20);
        check_password(&p).unwrap();
        assert_ne!(p, generate_password());
    }
}
