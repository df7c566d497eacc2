//! Networks in CIDR notation, as the ACon guards use them: the list boards may connect from
//! (`--acon-allow`), the network a board is seen from (the /24 of an IPv4 address, the /64 of
//! an IPv6 one), and whether a listening address faces more than a private network.
//!
//! Invariants:
//! - A [`Net`] has its host bits cleared, so two equal networks compare equal however they
//!   were written (`10.1.2.3/24` is `10.1.2.0/24`).
//! - An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack listener reports for an
//!   IPv4 peer) is its IPv4 address everywhere here; a mapped network (`::ffff:10.0.0.0/104`)
//!   is the IPv4 network.
//! - Pure: no I/O, no allocation when matching.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The prefix of the network a board is seen from, IPv4.
pub const BOARD_NET_V4: u8 = 24;
/// The prefix of the network a board is seen from, IPv6.
pub const BOARD_NET_V6: u8 = 64;

/// A network: an address with its host bits cleared, and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

/// A network that could not be read: the entry as given, and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{entry:?}: {reason}")]
pub struct NetError {
    pub entry: String,
    pub reason: String,
}

impl Net {
    /// The network of `addr` with `prefix` bits; `None` if the prefix is too long for the
    /// address family.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Net> {
        match addr {
            IpAddr::V4(a) if prefix <= 32 => Some(Net {
                addr: IpAddr::V4(mask4(a, prefix)),
                prefix,
            }),
            IpAddr::V6(a) if prefix <= 128 => match a.to_ipv4_mapped() {
                Some(v4) if prefix >= 96 => Net::new(IpAddr::V4(v4), prefix - 96),
                _ => Some(Net {
                    addr: IpAddr::V6(mask6(a, prefix)),
                    prefix,
                }),
            },
            _ => None,
        }
    }

    /// The network a board is seen from: the /24 of an IPv4 address, the /64 of an IPv6 one.
    pub fn of(ip: IpAddr) -> Net {
        match ip.to_canonical() {
            IpAddr::V4(a) => Net {
                addr: IpAddr::V4(mask4(a, BOARD_NET_V4)),
                prefix: BOARD_NET_V4,
            },
            IpAddr::V6(a) => Net {
                addr: IpAddr::V6(mask6(a, BOARD_NET_V6)),
                prefix: BOARD_NET_V6,
            },
        }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(a)) => mask4(a, self.prefix) == net,
            (IpAddr::V6(net), IpAddr::V6(a)) => mask6(a, self.prefix) == net,
            _ => false,
        }
    }

    /// Whether every address of `other` is in this network.
    pub fn covers(&self, other: &Net) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }
}

fn mask4(a: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    Ipv4Addr::from(u32::from(a) & mask)
}

fn mask6(a: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    Ipv6Addr::from(u128::from(a) & mask)
}

impl FromStr for Net {
    type Err = NetError;

    /// `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a network of one: /32 or /128). Host
    /// bits are cleared.
    fn from_str(s: &str) -> Result<Net, NetError> {
        let entry = s.trim();
        let err = |reason: &str| NetError {
            entry: entry.to_string(),
            reason: reason.to_string(),
        };
        let (addr, prefix) = match entry.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (entry, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| err("not an IP address (expected e.g. 10.0.0.0/8 or 2001:db8::/32)"))?;
        let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                match p.parse::<u8>() {
                    Ok(n) if n <= max => n,
                    _ => {
                        return Err(err(&format!(
                            "prefix length {p} is longer than the address ({max} bits)"
                        )));
                    }
                }
            }
            Some(_) => return Err(err("the prefix length after '/' must be a number")),
        };
        Net::new(addr, prefix).ok_or_else(|| err("prefix length is longer than the address"))
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl From<Net> for String {
    fn from(n: Net) -> String {
        n.to_string()
    }
}

impl TryFrom<String> for Net {
    type Error = NetError;

    fn try_from(s: String) -> Result<Net, NetError> {
        s.parse()
    }
}

/// The networks boards may connect from (`--acon-allow`): at least one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowList(Vec<Net>);

impl AllowList {
    /// A comma-separated list of networks or addresses; empty items are skipped, but at least
    /// one network must be given.
    pub fn parse(s: &str) -> Result<AllowList, NetError> {
        let nets = s
            .split(',')
            .filter(|e| !e.trim().is_empty())
            .map(str::parse)
            .collect::<Result<Vec<Net>, NetError>>()?;
        if nets.is_empty() {
            return Err(NetError {
                entry: s.to_string(),
                reason: "no network given (leave the setting out to accept boards from anywhere)"
                    .into(),
            });
        }
        Ok(AllowList(nets))
    }

    /// Whether a peer at `ip` may connect.
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(ip))
    }

    pub fn networks(&self) -> &[Net] {
        &self.0
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, n) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{n}")?;
        }
        Ok(())
    }
}

/// Whether a listener on `ip` can be reached from beyond loopback and private networks: all
/// interfaces (`0.0.0.0`, `::`) or a public address.
pub fn faces_public(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(a) => {
            let private = a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                // 100.64.0.0/10, carrier-grade NAT
                || (a.octets()[0] == 100 && (a.octets()[1] & 0xc0) == 64);
            !private
        }
        IpAddr::V6(a) => {
            let seg = a.segments()[0];
            let private = a.is_loopback()
                || (seg & 0xfe00) == 0xfc00 // unique local, fc00::/7
                || (seg & 0xffc0) == 0xfe80; // link local, fe80::/10
            !private
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> Net {
        s.parse().unwrap()
    }

    #[test]
    fn networks_parse_with_host_bits_cleared_and_bare_addresses_as_one_host() {
        for (given, shown) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            (" 10.1.2.3/24 ", "10.1.2.0/24"),
            ("192.168.1.7", "192.168.1.7/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("2001:db8:1:2:3::1/64", "2001:db8:1:2::/64"),
            ("2001:db8::1", "2001:db8::1/128"),
            ("::/0", "::/0"),
            ("::ffff:10.1.2.3/120", "10.1.2.0/24"),
            ("::ffff:10.1.2.3", "10.1.2.3/32"),
        ] {
            assert_eq!(net(given).to_string(), shown, "{given}");
        }
        assert_eq!(net("10.1.2.3/24"), net("10.1.2.0/24"));
    }

    #[test]
    fn bad_networks_name_the_entry_and_the_reason() {
        for (given, reason) in [
            ("10.0.0.0/33", "longer than the address"),
            ("2001:db8::/129", "longer than the address"),
            ("10.0.0.0/999", "longer than the address"),
            ("10.0.0.0/", "must be a number"),
            ("10.0.0.0/-1", "must be a number"),
            ("10.0.0.0/8/8", "must be a number"),
            ("10.0.0.0/0008", "must be a number"),
            ("10.0.0/8", "not an IP address"),
            ("example.org", "not an IP address"),
            ("", "not an IP address"),
        ] {
            let e = given.parse::<Net>().unwrap_err();
            assert_eq!(e.entry, given.trim(), "{given}");
            assert!(e.reason.contains(reason), "{given}: {e}");
        }
        let e = AllowList::parse("10.0.0.0/8, 300.1.1.1").unwrap_err();
        assert_eq!(e.entry, "300.1.1.1");
        assert!(AllowList::parse(" , ").is_err());
    }

    #[test]
    fn matching_by_prefix_and_family_with_mapped_ipv4() {
        let n = net("10.0.0.0/8");
        assert!(n.contains(ip("10.255.1.2")));
        assert!(!n.contains(ip("11.0.0.1")));
        assert!(n.contains(ip("::ffff:10.9.8.7")), "a mapped peer is IPv4");
        assert!(!n.contains(ip("2001:db8::1")));
        assert!(net("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(!net("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(net("::/0").contains(ip("2001:db8::1")));
        let n = net("2001:db8:1::/48");
        assert!(n.contains(ip("2001:db8:1:ffff::1")));
        assert!(!n.contains(ip("2001:db8:2::1")));
        assert!(net("127.0.0.1").contains(ip("127.0.0.1")));
        assert!(!net("127.0.0.1").contains(ip("127.0.0.2")));
        let list = AllowList::parse("127.0.0.0/8,2001:db8::/32").unwrap();
        assert!(list.permits(ip("127.0.0.1")) && list.permits(ip("2001:db8::5")));
        assert!(!list.permits(ip("10.0.0.1")));
        assert_eq!(list.to_string(), "127.0.0.0/8,2001:db8::/32");
        assert!(net("10.0.0.0/8").covers(&net("10.1.2.0/24")));
        assert!(!net("10.1.2.0/24").covers(&net("10.0.0.0/8")));
    }

    #[test]
    fn the_network_of_an_address_is_its_24_or_64() {
        assert_eq!(Net::of(ip("10.1.2.3")).to_string(), "10.1.2.0/24");
        assert_eq!(Net::of(ip("::ffff:10.1.2.3")).to_string(), "10.1.2.0/24");
        assert_eq!(
            Net::of(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(Net::of(ip("127.0.0.1")), Net::of(ip("127.0.0.2")));
        assert_ne!(Net::of(ip("127.0.0.1")), Net::of(ip("127.0.1.1")));
        let json = serde_json::to_string(&Net::of(ip("10.1.2.3"))).unwrap();
        assert_eq!(json, "\"10.1.2.0/24\"");
        assert_eq!(
            serde_json::from_str::<Net>(&json).unwrap(),
            net("10.1.2.0/24")
        );
        assert!(serde_json::from_str::<Net>("\"10.1.2.0/99\"").is_err());
    }

    #[test]
    fn public_facing_listeners() {
        for a in [
            "0.0.0.0",
            "::",
            "203.0.113.5",
            "2001:db8::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(faces_public(ip(a)), "{a}");
        }
        for a in [
            "127.0.0.1",
            "10.0.0.5",
            "172.16.3.4",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:192.168.0.1",
        ] {
            assert!(!faces_public(ip(a)), "{a}");
        }
    }
}
