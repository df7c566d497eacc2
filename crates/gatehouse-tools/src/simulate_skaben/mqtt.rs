//! MQTT plumbing shared by `simulate skaben` and `bench skaben`: the broker address, client
//! options sized for thousands of connections (with the device's login, see [`super::login`]),
//! device ids, the connect ramp, and the file descriptor limit.

use std::time::Duration;

use anyhow::{Context as _, bail};
use rumqttc::{AsyncClient, EventLoop, MqttOptions, QoS};

use super::login::Login;

/// Largest packet either way (rumqttc's default is 10 KiB, too small for a big config).
pub(crate) const MAX_PACKET: usize = 256 * 1024;
/// MQTT keep-alive of every connection.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(60);
/// Seconds one connect (TCP + CONNECT/CONNACK) may take.
pub(crate) const CONNECT_TIMEOUT_SECS: u64 = 10;
/// File descriptors kept free for everything that is not a device connection.
const SPARE_FDS: u64 = 256;
/// Digits in a device id (a MAC without separators).
pub(crate) const ID_DIGITS: usize = 12;
/// Devices are started in batches this far apart.
pub(crate) const RAMP_TICK: Duration = Duration::from_millis(100);

/// A broker address, from `HOST:PORT` (an `mqtt://` or `tcp://` prefix is accepted, and
/// `[v6]:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Broker {
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl Broker {
    pub(crate) fn parse(text: &str) -> anyhow::Result<Broker> {
        let rest = text
            .strip_prefix("mqtt://")
            .or_else(|| text.strip_prefix("tcp://"))
            .unwrap_or(text)
            .trim_end_matches('/');
        let (host, port) = rest
            .rsplit_once(':')
            .with_context(|| format!("--mqtt {text:?} is not HOST:PORT"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            bail!("--mqtt {text:?} has no host (expected HOST:PORT)");
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .with_context(|| format!("--mqtt {text:?}: the port must be 1..=65535"))?;
        Ok(Broker {
            host: host.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A client and its event loop, for one device: clean session, TCP_NODELAY, big packets, and
/// small queues (`capacity` requests waiting, `inflight` QoS 1 publishes unacknowledged), so
/// that ten thousand of them stay cheap. With a `login`, its CONNECT carries that user name
/// (and password, unless empty); without, it connects anonymously.
pub(crate) fn client(
    broker: &Broker,
    client_id: &str,
    login: Option<&Login>,
    capacity: usize,
    inflight: u16,
) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(client_id, broker.host.as_str(), broker.port);
    if let Some(login) = login {
        options.set_credentials(login.username.as_str(), login.password.as_str());
    }
    options
        .set_keep_alive(KEEP_ALIVE)
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_request_channel_capacity(capacity)
        .set_inflight(inflight.max(1));
    let (client, mut eventloop) = AsyncClient::new(options, capacity);
    let mut network = eventloop.network_options();
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(CONNECT_TIMEOUT_SECS);
    eventloop.set_network_options(network);
    (client, eventloop)
}

/// QoS from its number (clap value parser).
pub(crate) fn parse_qos(s: &str) -> Result<u8, String> {
    match s.parse::<u8>() {
        Ok(level) if level <= 2 => Ok(level),
        _ => Err(format!("{s} is not a QoS: 0, 1 or 2")),
    }
}

pub(crate) fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// A device-id prefix: up to 11 hex digits, lowercased (clap value parser).
pub(crate) fn parse_prefix(s: &str) -> Result<String, String> {
    if s.len() < ID_DIGITS && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!(
            "{s:?} is not a device-id prefix: 0 to {} hex digits",
            ID_DIGITS - 1
        ))
    }
}

/// Checks that `devices` ids fit after `prefix`.
pub(crate) fn check_ids(prefix: &str, devices: u64) -> anyhow::Result<()> {
    // At most 12 free digits: 16^12 = 2^48 fits a u64.
    let free = u32::try_from(ID_DIGITS.saturating_sub(prefix.len())).unwrap_or(0);
    let room = 16u64.pow(free);
    if devices > room {
        bail!(
            "{devices} devices do not fit after the id prefix {prefix:?}: {free} hex digits \
             leave room for {room}; use a shorter --id-prefix"
        );
    }
    Ok(())
}

/// Device `index`'s id: the prefix, then the index in hex, 12 lowercase hex digits in all.
/// The same prefix and index always give the same id, so a rerun is the same devices.
pub(crate) fn device_id(prefix: &str, index: u64) -> String {
    let width = ID_DIGITS.saturating_sub(prefix.len());
    format!("{prefix}{index:0width$x}")
}

/// Makes room for one descriptor per connection.
pub(crate) fn raise_fd_limit(conns: u64) -> anyhow::Result<()> {
    let needed = conns + SPARE_FDS;
    let got =
        rlimit::increase_nofile_limit(needed).context("cannot read or raise RLIMIT_NOFILE")?;
    if got < needed {
        bail!(
            "{conns} connections need about {needed} open files, but RLIMIT_NOFILE is {got}: \
             raise the hard limit (ulimit -Hn, or LimitNOFILE= in systemd) or use fewer devices"
        );
    }
    Ok(())
}

/// How many devices to start per [`RAMP_TICK`] for `per_second`.
pub(crate) fn ramp_batch(per_second: u32) -> usize {
    let per_tick = f64::from(per_second) * RAMP_TICK.as_secs_f64();
    (per_tick.ceil() as usize).max(1)
}

/// A small multiple of a pause, ± 25 %, from a cheap hash of `seed` (no RNG needed).
pub(crate) fn jitter(pause: Duration, seed: u64) -> Duration {
    let x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54; // 0..1024
    pause.mul_f64(0.75 + (x as f64) / 2048.0)
}

/// Digits grouped by thousands with a space: `21 345`.
pub(crate) fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// Microseconds as milliseconds for a report: `3.9 ms`, `40 ms`.
pub(crate) fn ms(us: u64) -> String {
    let ms = us as f64 / 1000.0;
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses() {
        let b = |s: &str| Broker::parse(s).unwrap();
        assert_eq!(
            b("127.0.0.1:1883"),
            Broker {
                host: "127.0.0.1".into(),
                port: 1883
            }
        );
        assert_eq!(b("mqtt://broker.lan:18830/").host, "broker.lan");
        assert_eq!(b("tcp://h:1").port, 1);
        assert_eq!(b("[::1]:1883").host, "::1");
        assert_eq!(b("[::1]:1883").to_string(), "[::1]:1883");
        for bad in ["localhost", ":1883", "h:0", "h:65536", "h:x"] {
            assert!(Broker::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_are_twelve_hex_digits() {
        assert_eq!(device_id("5ca1ab", 1), "5ca1ab000001");
        assert_eq!(device_id("5ca1ab", 0xabcdef), "5ca1ababcdef");
        assert_eq!(device_id("", 255), "0000000000ff");
        assert!(skaben::validate_device_id(&device_id("5ca1ab", 7)).is_ok());
        assert_eq!(parse_prefix("5CA1AB").unwrap(), "5ca1ab");
        assert!(parse_prefix("5ca1ab000000").is_err());
        assert!(parse_prefix("xyz").is_err());
        assert!(check_ids("5ca1ab", 16_777_216).is_ok());
        assert!(check_ids("5ca1ab", 16_777_217).is_err());
        assert!(check_ids("5ca1ab1e000", 16).is_ok());
        assert!(check_ids("5ca1ab1e000", 17).is_err());
        assert!(check_ids("", 1 << 48).is_ok());
        assert!(check_ids("", (1 << 48) + 1).is_err());
    }

    #[test]
    fn formatting() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(21345), "21 345");
        assert_eq!(grouped(1234567), "1 234 567");
        assert_eq!(ms(3_900), "3.9 ms");
        assert_eq!(ms(40_200), "40 ms");
        assert_eq!(ramp_batch(2000), 200);
        assert_eq!(ramp_batch(1), 1);
        for seed in 0..100 {
            let j = jitter(Duration::from_secs(1), seed);
            assert!(j >= Duration::from_millis(750) && j < Duration::from_millis(1250));
        }
        assert_eq!(parse_qos("1"), Ok(1));
        assert!(parse_qos("3").is_err());
    }
}
