//! MQTT logins of the virtual devices, shared by `simulate skaben` and `bench skaben`.
//!
//! A device logs in with, in this order:
//! - its own line of the `--credentials` file, `<device-id> <username> <password>`
//!   (whitespace-separated; blank lines and lines starting with `#` are ignored; the id is
//!   lowercased like the tools' ids), read once at start;
//! - else `--username`/`--password` (env `GATEHOUSE_MQTT_USERNAME`/`GATEHOUSE_MQTT_PASSWORD`):
//!   a type credential, one secret for a fleet of identical devices;
//! - else none: it connects anonymously.
//!
//! A broker that refuses a login (CONNACK 4, bad user name or password, or 5, not authorised)
//! stops the tool: [`refusal`] turns that error into the message to stop with, instead of
//! retrying forever.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use anyhow::{Context as _, bail};
use rumqttc::{ConnectReturnCode, ConnectionError};

use super::mqtt;

/// Where a login came from, for messages.
#[derive(Clone, PartialEq, Eq)]
enum Origin {
    /// `--username`/`--password`.
    Args,
    /// A line of the `--credentials` file (1-based).
    Line(usize),
}

/// One MQTT user name and password. Its `Debug` does not show the password.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Login {
    pub(crate) username: String,
    pub(crate) password: String,
    origin: Origin,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("username", &self.username)
            .field("password", &"…")
            .finish()
    }
}

/// Every device's login: its own line of the credentials file, else the type credential,
/// else none (anonymous).
#[derive(Debug, Default)]
pub(crate) struct Logins {
    /// `--username`/`--password`, for every device without a line of its own.
    shared: Option<Login>,
    /// `--credentials`: device id → login.
    per_device: HashMap<String, Login>,
    /// The `--credentials` file as given, for messages.
    file: Option<String>,
}

impl Logins {
    /// From the tools' arguments; reads the credentials file (once).
    pub(crate) fn from_args(
        username: Option<&str>,
        password: Option<&str>,
        credentials: Option<&Path>,
    ) -> anyhow::Result<Logins> {
        let shared = type_login(username, password)?;
        let (per_device, file) = match credentials {
            None => (HashMap::new(), None),
            Some(path) => {
                let name = path.display().to_string();
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read --credentials {name}"))?;
                (parse_credentials(&text, &name)?, Some(name))
            }
        };
        Ok(Logins {
            shared,
            per_device,
            file,
        })
    }

    /// The login of device `id` (lowercase), or `None` to connect anonymously.
    pub(crate) fn get(&self, id: &str) -> Option<&Login> {
        self.per_device.get(id).or(self.shared.as_ref())
    }

    /// Whether any device logs in.
    pub(crate) fn any(&self) -> bool {
        self.shared.is_some() || !self.per_device.is_empty()
    }

    /// One line on who logs in how, for the tools' header: `None` when every device connects
    /// anonymously. `prefix` and `devices` are the run's ids, to count the file's lines that
    /// are for these devices (a wrong --id-prefix shows as 0).
    pub(crate) fn describe(&self, prefix: &str, devices: u64) -> Option<String> {
        if !self.any() {
            return None;
        }
        let others = match &self.shared {
            Some(login) => format!("as user {:?}", login.username),
            None => "anonymously".to_string(),
        };
        Some(match &self.file {
            None => format!("login: every device {others}"),
            Some(file) => {
                let ours = self
                    .per_device
                    .keys()
                    .filter(|id| is_one_of(id, prefix, devices))
                    .count();
                format!(
                    "login: {ours} of these devices from {file} ({} lines), the others {others}",
                    self.per_device.len()
                )
            }
        })
    }

    /// How device `id` logged in, for a refusal: `logged in as "u" (--username)`.
    fn how(&self, id: &str) -> String {
        match self.get(id) {
            None => "it connected anonymously".to_string(),
            Some(login) => {
                let from = match (&login.origin, &self.file) {
                    (Origin::Line(n), Some(file)) => format!("{file} line {n}"),
                    (Origin::Line(n), None) => format!("--credentials line {n}"),
                    (Origin::Args, _) => "--username".to_string(),
                };
                format!("it logged in as {:?}, from {from}", login.username)
            }
        }
    }
}

/// Whether `id` is one of the `devices` ids after `prefix` (see [`mqtt::device_id`]).
fn is_one_of(id: &str, prefix: &str, devices: u64) -> bool {
    id.len() == mqtt::ID_DIGITS
        && id.strip_prefix(prefix).is_some_and(|rest| {
            rest.bytes().all(|b| b.is_ascii_hexdigit())
                && u64::from_str_radix(rest, 16).is_ok_and(|index| index < devices)
        })
}

/// The type credential from `--username`/`--password`: both, the user name alone (MQTT sends
/// no password then), or neither. A password without a user name is an error: MQTT 3.1.1 has
/// no way to send one.
pub(crate) fn type_login(
    username: Option<&str>,
    password: Option<&str>,
) -> anyhow::Result<Option<Login>> {
    match (username, password) {
        (None, None) => Ok(None),
        (None, Some(_)) => bail!(
            "--password (or GATEHOUSE_MQTT_PASSWORD) is given without --username: MQTT sends a \
             password only with a user name; add --username USER (or GATEHOUSE_MQTT_USERNAME)"
        ),
        (Some(""), _) => bail!(
            "--username (or GATEHOUSE_MQTT_USERNAME) is empty: give a user name, or leave it \
             and --password out to connect anonymously"
        ),
        (Some(username), password) => Ok(Some(Login {
            username: username.to_string(),
            password: password.unwrap_or_default().to_string(),
            origin: Origin::Args,
        })),
    }
}

/// Parses a credentials file: `<device-id> <username> <password>` per line, whitespace-
/// separated; blank lines and lines starting with `#` are ignored. Ids are lowercased and
/// checked as SKABEN device ids. `name` is the file, for messages.
pub(crate) fn parse_credentials(text: &str, name: &str) -> anyhow::Result<HashMap<String, Login>> {
    let mut logins: HashMap<String, Login> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [id, username, password] = fields[..] else {
            bail!(
                "{name} line {n}: expected `<device-id> <username> <password>`, found {} \
                 field{}",
                fields.len(),
                if fields.len() == 1 { "" } else { "s" }
            );
        };
        let id = skaben::validate_device_id(id).with_context(|| format!("{name} line {n}"))?;
        if let Some(first) = logins.get(&id) {
            let first = match first.origin {
                Origin::Line(m) => m,
                Origin::Args => 0,
            };
            bail!("{name} line {n}: device {id} already has a line (line {first})");
        }
        let login = Login {
            username: username.to_string(),
            password: password.to_string(),
            origin: Origin::Line(n),
        };
        logins.insert(id, login);
    }
    Ok(logins)
}

/// The message to stop with when `error` is the broker refusing device `id`'s login (CONNACK
/// 4 or 5); `None` for any other error (the device retries those).
pub(crate) fn refusal(logins: &Logins, id: &str, error: &ConnectionError) -> Option<String> {
    let reason = match error {
        ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword) => {
            "bad user name or password"
        }
        ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized) => "not authorised",
        _ => return None,
    };
    Some(format!(
        "the broker refused the login of device {id}: {reason}; check \
         --username/--password/--credentials ({})",
        logins.how(id)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(username: &str, password: &str, line: usize) -> Login {
        Login {
            username: username.into(),
            password: password.into(),
            origin: Origin::Line(line),
        }
    }

    #[test]
    fn a_credentials_file_parses() {
        let text = "# venue props\n\
                    5ca1ab000000 lock-0 s3cret\n\
                    \n\
                    \t5CA1AB000001\tlock-1   other  \n\
                    \x20  # an indented comment\n\
                    5ca1ab00000a lamp p#ss\n";
        let logins = parse_credentials(text, "creds.txt").unwrap();
        assert_eq!(logins.len(), 3);
        assert_eq!(logins["5ca1ab000000"], login("lock-0", "s3cret", 2));
        // The id is lowercased; tabs and runs of spaces separate.
        assert_eq!(logins["5ca1ab000001"], login("lock-1", "other", 4));
        // `#` starts a comment only at the start of a line.
        assert_eq!(logins["5ca1ab00000a"], login("lamp", "p#ss", 6));
        assert!(parse_credentials("", "empty").unwrap().is_empty());
        assert!(parse_credentials("# nothing\n\n", "c").unwrap().is_empty());
        // CRLF line ends.
        let crlf = parse_credentials("# x\r\nABC u p\r\n", "c").unwrap();
        assert_eq!(crlf["abc"], login("u", "p", 2));
    }

    #[test]
    fn a_malformed_line_is_named_by_file_and_number() {
        let err = |text: &str| parse_credentials(text, "creds.txt").unwrap_err();
        let e = format!(
            "{:#}",
            err("# ok\n5ca1ab000000 u p\n5ca1ab000001 only-user\n")
        );
        assert!(e.starts_with("creds.txt line 3: "), "{e}");
        assert!(e.contains("found 2 fields"), "{e}");
        let e = format!("{:#}", err("a u p extra\n"));
        assert!(
            e.starts_with("creds.txt line 1: ") && e.contains("4 fields"),
            "{e}"
        );
        let e = format!("{:#}", err("\n\nlonely\n"));
        assert!(
            e.starts_with("creds.txt line 3: ") && e.contains("1 field"),
            "{e}"
        );
        // Not a device id.
        let e = format!("{:#}", err("x u p\nlock/1 u p\n"));
        assert!(e.starts_with("creds.txt line 2"), "{e}");
        let e = format!("{:#}", err("all u p\n"));
        assert!(e.starts_with("creds.txt line 1"), "{e}");
        // The same device twice, whatever its case.
        let e = format!("{:#}", err("5ca1ab000000 u p\n# x\n5CA1AB000000 v q\n"));
        assert!(
            e.starts_with("creds.txt line 3: ") && e.contains("already has a line (line 1)"),
            "{e}"
        );
    }

    #[test]
    fn username_and_password_are_checked() {
        assert_eq!(type_login(None, None).unwrap(), None);
        let both = type_login(Some("lock"), Some("s3cret")).unwrap().unwrap();
        assert_eq!(
            (both.username.as_str(), both.password.as_str()),
            ("lock", "s3cret")
        );
        // A user name alone: no password is sent.
        let alone = type_login(Some("lock"), None).unwrap().unwrap();
        assert_eq!(alone.password, "");
        let e = type_login(None, Some("s3cret")).unwrap_err().to_string();
        assert!(
            e.contains("--password") && e.contains("without --username"),
            "{e}"
        );
        assert!(!e.contains("s3cret"), "{e}");
        assert!(type_login(Some(""), Some("p")).is_err());
        assert!(!format!("{both:?}").contains("s3cret"));
    }

    #[test]
    fn a_device_uses_its_line_else_the_type_credential() {
        let mut logins = Logins {
            shared: type_login(Some("fleet"), Some("pw")).unwrap(),
            per_device: parse_credentials("5CA1AB000001 own secret\nffffffffffff x y\n", "c.txt")
                .unwrap(),
            file: Some("c.txt".into()),
        };
        assert_eq!(logins.get("5ca1ab000001").unwrap().username, "own");
        assert_eq!(logins.get("5ca1ab000002").unwrap().username, "fleet");
        assert_eq!(
            logins.describe("5ca1ab", 10).unwrap(),
            "login: 1 of these devices from c.txt (2 lines), the others as user \"fleet\""
        );
        assert!(
            logins
                .describe("5ca1ab", 1)
                .unwrap()
                .starts_with("login: 0 of")
        );
        let refused = ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized);
        assert_eq!(
            refusal(&logins, "5ca1ab000001", &refused).unwrap(),
            "the broker refused the login of device 5ca1ab000001: not authorised; check \
             --username/--password/--credentials (it logged in as \"own\", from c.txt line 1)"
        );
        let bad = ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword);
        let e = refusal(&logins, "5ca1ab000002", &bad).unwrap();
        assert!(e.contains("bad user name or password"), "{e}");
        assert!(e.contains("as \"fleet\", from --username"), "{e}");
        assert!(!e.contains("pw"), "{e}");
        for other in [
            ConnectionError::ConnectionRefused(ConnectReturnCode::ServiceUnavailable),
            ConnectionError::NetworkTimeout,
        ] {
            assert_eq!(refusal(&logins, "5ca1ab000002", &other), None);
        }
        logins.shared = None;
        assert!(logins.get("5ca1ab000002").is_none());
        assert!(logins.any());
        let e = refusal(&logins, "5ca1ab000002", &refused).unwrap();
        assert!(e.ends_with("(it connected anonymously)"), "{e}");
        let none = Logins::default();
        assert!(!none.any());
        assert_eq!(none.describe("5ca1ab", 10), None);
        let fleet = Logins {
            shared: type_login(Some("fleet"), None).unwrap(),
            ..Logins::default()
        };
        assert_eq!(
            fleet.describe("5ca1ab", 10).unwrap(),
            "login: every device as user \"fleet\""
        );
    }

    #[test]
    fn the_file_is_read_from_disk() {
        let dir = std::env::temp_dir().join(format!("gatehouse-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("creds.txt");
        std::fs::write(&path, "# one\n5ca1ab000000 u p\n").unwrap();
        let logins = Logins::from_args(None, None, Some(&path)).unwrap();
        assert_eq!(logins.get("5ca1ab000000").unwrap().username, "u");
        assert!(logins.get("5ca1ab000001").is_none());
        std::fs::write(&path, "5ca1ab000000 u\n").unwrap();
        let e = format!(
            "{:#}",
            Logins::from_args(None, None, Some(&path)).unwrap_err()
        );
        assert!(e.contains("creds.txt line 1"), "{e}");
        let missing = dir.join("missing.txt");
        let e = format!(
            "{:#}",
            Logins::from_args(None, None, Some(&missing)).unwrap_err()
        );
        assert!(
            e.contains("cannot read --credentials") && e.contains("missing.txt"),
            "{e}"
        );
        // The username/password check comes first.
        assert!(Logins::from_args(None, Some("p"), Some(&path)).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
