//! The file-descriptor budget: every connection is a file descriptor, and when the process runs
//! out of them every listener stops at once (boards get no answer, HTTP and MQTT time out) and
//! mqtt5's accept loop — which we cannot patch — logs `TCP accept error` in a tight loop.
//!
//! So at start-up the open-files limit is split, once, below its value:
//! - a **reserve** for everything that is not a client connection: the store (the database, its
//!   WAL and shm, the data-directory lock), the runtime's epoll and event fds, the log, the
//!   listeners themselves, the broker's internals: [`RESERVE_MIN`] or [`RESERVE_PERCENT`] % of
//!   the limit, whichever is more;
//! - **HTTP**: [`HTTP_CONNECTIONS_BUDGET`] (the HTTP server's own connection cap);
//! - **MQTT** (embedded broker only): its connection cap, plus room for connections that have
//!   not sent CONNECT yet. mqtt5 counts a client against `max_clients` and
//!   `max_connections_per_ip` only once its CONNECT is accepted; before that, a TCP connection
//!   lives up to mqtt5's hard-coded 10 s CONNECT timeout and is bounded by nothing but the
//!   broker's connection-rate limit. The rate limit is set to [`MqttShare::handshakes`] new
//!   connections per [`HANDSHAKE_WINDOW`] (a sliding window longer than the CONNECT timeout),
//!   so at most that many are waiting for their CONNECT at any time;
//! - **ACon**: its connection cap.
//!
//! Both protocols refuse over-cap connections *after* `accept` (the socket is accepted, then
//! closed at once), so a refusal costs one descriptor for an instant; with every cap inside the
//! budget, `accept` cannot fail with EMFILE unless something outside the budget (the reserve)
//! leaks.

use std::time::Duration;

/// The HTTP server's connection cap, counted in the budget (the HTTP listener's own setting
/// replaces this constant when it exists).
pub const HTTP_CONNECTIONS_BUDGET: u64 = 512;
/// Descriptors kept for the store, the runtime, the log and the broker's internals, at least.
pub const RESERVE_MIN: u64 = 256;
/// … or this share of the limit, if more.
pub const RESERVE_PERCENT: u64 = 5;
/// The sliding window of the embedded broker's connection-rate limit: longer than mqtt5's
/// CONNECT timeout (10 s), so the connections admitted in one window bound those still
/// waiting for their CONNECT.
pub const HANDSHAKE_WINDOW: Duration = Duration::from_secs(12);

/// How a budget was met.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdBudget {
    /// The soft open-files limit the budget is cut from.
    pub limit: u64,
    pub reserve: u64,
    pub http: u64,
    /// ACon connections at once (`--acon-max-connections`, lowered to fit).
    pub acon: usize,
    /// The embedded broker's share (`None`: an external broker, no MQTT listener here).
    pub mqtt: Option<MqttShare>,
    /// One line per setting that had to be lowered, naming it.
    pub warnings: Vec<String>,
}

/// The embedded broker's part of the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MqttShare {
    /// Connected clients at once (`--mqtt-max-connections`, lowered to fit).
    pub connections: usize,
    /// New connections admitted per [`HANDSHAKE_WINDOW`]: the most that can wait for their
    /// CONNECT at once.
    pub handshakes: usize,
}

impl MqttShare {
    fn for_connections(connections: usize) -> MqttShare {
        MqttShare {
            connections,
            handshakes: (connections / 4).max(64),
        }
    }

    fn fds(&self) -> u64 {
        (self.connections + self.handshakes) as u64
    }
}

/// Why the limit cannot hold a budget.
#[derive(Debug, thiserror::Error)]
#[error(
    "the open-files limit ({limit}) leaves no room for connections after the reserve ({reserve}) and HTTP ({http}); raise it (`ulimit -n`, systemd's LimitNOFILE=) to at least {need}"
)]
pub struct BudgetError {
    pub limit: u64,
    pub reserve: u64,
    pub http: u64,
    pub need: u64,
}

/// Splits `limit` descriptors: the reserve and HTTP first, then ACon and (with the embedded
/// broker, `mqtt_wanted`) MQTT. Caps that fit are kept; otherwise a cap that asks for at
/// most half of what is left keeps it and the other is lowered, or both get half, each
/// lowered cap with a warning naming its setting.
pub fn plan(
    limit: u64,
    acon_wanted: usize,
    mqtt_wanted: Option<usize>,
) -> Result<FdBudget, BudgetError> {
    plan_with_http(limit, acon_wanted, mqtt_wanted, HTTP_CONNECTIONS_BUDGET)
}

/// [`plan`] with the HTTP listeners' own cap (`--http-max-connections`, times the listeners).
pub fn plan_with_http(
    limit: u64,
    acon_wanted: usize,
    mqtt_wanted: Option<usize>,
    http: u64,
) -> Result<FdBudget, BudgetError> {
    let reserve = RESERVE_MIN.max(limit / 100 * RESERVE_PERCENT);
    let minimum = 1 + mqtt_wanted.map_or(0, |_| MqttShare::for_connections(1).fds());
    let available = limit.saturating_sub(reserve + http);
    if available < minimum {
        return Err(BudgetError {
            limit,
            reserve,
            http,
            need: reserve + http + minimum + 1024,
        });
    }
    let acon_wanted = acon_wanted.max(1);
    let wanted_mqtt = mqtt_wanted.map(|m| MqttShare::for_connections(m.max(1)));
    let asked = acon_wanted as u64 + wanted_mqtt.map_or(0, |m| m.fds());
    let mut warnings = Vec::new();
    if asked <= available {
        return Ok(FdBudget {
            limit,
            reserve,
            http,
            acon: acon_wanted,
            mqtt: wanted_mqtt,
            warnings,
        });
    }
    let (acon, mqtt) = match wanted_mqtt {
        None => (available as usize, None),
        Some(m) => {
            // A listener that asks for at most half keeps its ask, the other gets the rest;
            // when both ask for more, each gets half. (Not in proportion: a small cap, like a
            // bench's 2 boards beside 10 000 MQTT clients, would shrink to nothing.)
            let half = available / 2;
            let acon = if m.fds() <= half {
                (available - m.fds()).min(acon_wanted as u64) as usize
            } else if acon_wanted as u64 <= half {
                acon_wanted
            } else {
                half as usize
            };
            // MQTT keeps at least its smallest share.
            let acon = acon.clamp(
                1,
                (available - MqttShare::for_connections(1).fds()) as usize,
            );
            let left = available - acon as u64;
            // The largest cap whose share (connections + handshakes) fits what is left.
            let mut lo = 1usize;
            let mut hi = m.connections;
            while lo < hi {
                let mid = lo + (hi - lo).div_ceil(2);
                if MqttShare::for_connections(mid).fds() <= left {
                    lo = mid;
                } else {
                    hi = mid - 1;
                }
            }
            (acon, Some(MqttShare::for_connections(lo)))
        }
    };
    let why = format!(
        "the open-files limit is {limit} (reserve {reserve}, HTTP {http}); raise it (`ulimit -n`, systemd's LimitNOFILE=) to keep the configured cap"
    );
    if acon < acon_wanted {
        warnings.push(format!(
            "--acon-max-connections / GATEHOUSE_ACON_MAX_CONNECTIONS lowered from {acon_wanted} to {acon}: {why}"
        ));
    }
    if let (Some(got), Some(want)) = (mqtt, wanted_mqtt)
        && got.connections < want.connections
    {
        warnings.push(format!(
            "--mqtt-max-connections / GATEHOUSE_MQTT_MAX_CONNECTIONS lowered from {} to {}: {why}",
            want.connections, got.connections
        ));
    }
    Ok(FdBudget {
        limit,
        reserve,
        http,
        acon,
        mqtt,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total(b: &FdBudget) -> u64 {
        b.reserve + b.http + b.acon as u64 + b.mqtt.map_or(0, |m| m.fds())
    }

    #[test]
    fn caps_that_fit_are_kept() {
        let b = plan(1_048_576, 20_000, Some(10_000)).unwrap();
        assert_eq!(b.acon, 20_000);
        assert_eq!(b.mqtt.unwrap().connections, 10_000);
        assert!(b.warnings.is_empty());
        assert!(total(&b) <= b.limit);
    }

    #[test]
    fn caps_that_do_not_fit_are_lowered_with_a_warning_each() {
        // Both ask for more than half: half each.
        let b = plan(20_000, 20_000, Some(10_000)).unwrap();
        assert_eq!(b.reserve, 1000);
        assert!(total(&b) <= 20_000, "{b:?}");
        assert_eq!(b.acon, (20_000 - 1000 - 512) / 2, "{b:?}");
        let m = b.mqtt.unwrap();
        assert!(m.connections < 10_000 && m.connections > 7_000, "{b:?}");
        assert_eq!(b.warnings.len(), 2);
        assert!(b.warnings[0].contains("--acon-max-connections"));
        assert!(b.warnings[1].contains("--mqtt-max-connections"));
    }

    #[test]
    fn a_small_cap_keeps_its_ask_and_the_other_takes_the_rest() {
        // A test process's default limit (1024): 2 boards beside the MQTT default.
        let b = plan(1024, 2, Some(10_000)).unwrap();
        assert_eq!(b.acon, 2, "{b:?}");
        assert!(total(&b) <= 1024, "{b:?}");
        assert_eq!(b.warnings.len(), 1, "only MQTT lowered: {b:?}");
        let b = plan(1024, 10_000, Some(10)).unwrap();
        assert_eq!(b.mqtt.unwrap().connections, 10, "{b:?}");
        assert!(total(&b) <= 1024, "{b:?}");
    }

    #[test]
    fn without_the_embedded_broker_acon_takes_the_rest() {
        let b = plan(2_000, 20_000, None).unwrap();
        assert_eq!(b.acon as u64, 2_000 - 256 - 512);
        assert_eq!(b.mqtt, None);
        assert_eq!(b.warnings.len(), 1);
    }

    #[test]
    fn a_limit_without_room_is_an_error_that_says_what_to_do() {
        let e = plan(700, 10, Some(10)).unwrap_err().to_string();
        assert!(e.contains("ulimit -n"), "{e}");
        // Every limit that plans stays within itself.
        for limit in [900u64, 1000, 1500, 5000, 65_536] {
            for (a, m) in [(1, 1), (20_000, 10_000), (5, 100_000), (100_000, 5)] {
                let b = plan(limit, a, Some(m)).unwrap();
                assert!(total(&b) <= limit, "{limit} {a} {m}: {b:?}");
            }
        }
    }
}
