//! The egress policy: which addresses a job's outbound request may connect to.
//!
//! Tenants choose the URLs their jobs call (`webhook.deliver`), so every address a request
//! would connect to is judged here first. Refused by default: the fleet's own services
//! (their hosts and the addresses those resolve to — never opened, not even by `allow`),
//! then every address that is not on the public internet: loopback, unspecified, private
//! (RFC 1918), link-local, CGNAT, unique-local, multicast, broadcast and reserved ranges,
//! and IPv6 forms that embed an IPv4 address of those. `egress.allow` opens ranges or host
//! names on purpose (an operator's internal receivers; the test suite's loopback ones).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// One `egress.allow` entry: a range (`10.1.0.0/16`, or one address) or a host name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowRule {
    Range(IpNet),
    /// Requests to exactly this host (lower case, no trailing dot) may reach any address
    /// it resolves to, except the fleet's own services.
    Host(String),
}

impl FromStr for AllowRule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let net = text
            .parse::<IpNet>()
            .ok()
            .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from));
        if let Some(net) = net {
            // Addresses are judged in their IPv4 form when an IPv6 form embeds one, so a
            // rule written as ::ffff:10.0.0.0/104 would never match anything.
            if net.addr() != canonical(net.addr()) {
                return Err(format!(
                    "{text:?} embeds an IPv4 range in IPv6; write it as IPv4"
                ));
            }
            return Ok(Self::Range(net.trunc()));
        }
        let host = normal_host(text);
        let valid = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !valid {
            return Err(format!(
                "{text:?} is neither an address, a range like 10.0.0.0/8, nor a host name"
            ));
        }
        Ok(Self::Host(host))
    }
}

/// Why a destination was refused; shown to the tenant as "destination not allowed: …".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The URL names no host at all.
    NoHost,
    /// One of the fleet's own services (database, broker, Redis, storage).
    Service,
    /// A special-purpose address; the range's name.
    Range {
        address: IpAddr,
        range: &'static str,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoHost => f.write_str("the URL has no host"),
            // The service is not named: a tenant learns nothing about the fleet's hosts.
            Self::Service => f.write_str("the fleet's own services are not a destination"),
            Self::Range { address, range } => write!(f, "{address} is a {range} address"),
        }
    }
}

/// The policy every outbound request of a job is checked against. Clones share the
/// service hosts' addresses, which are refreshed as they change ([`Self::set_resolved`]).
#[derive(Clone, Debug, Default)]
pub struct EgressPolicy {
    allow: Vec<AllowRule>,
    service_hosts: BTreeSet<String>,
    /// Services given as address literals.
    service_literals: BTreeSet<IpAddr>,
    /// What each service host name resolved to when last looked up.
    resolved: Arc<RwLock<BTreeMap<String, BTreeSet<IpAddr>>>>,
}

impl EgressPolicy {
    pub fn new(allow: Vec<AllowRule>) -> Self {
        Self {
            allow,
            ..Self::default()
        }
    }

    /// Refuses `host` (a name or an address literal), and whatever it is known to resolve
    /// to ([`Self::set_resolved`]), whatever `allow` says.
    pub fn with_service(mut self, host: &str) -> Self {
        let host = normal_host(host);
        match host.trim_matches(['[', ']']).parse::<IpAddr>() {
            Ok(ip) => {
                self.service_literals.insert(canonical(ip));
            }
            Err(_) => {
                self.service_hosts.insert(host);
            }
        }
        self
    }

    /// The service host names, to resolve (and resolve again as they change).
    pub fn service_names(&self) -> impl Iterator<Item = &str> {
        self.service_hosts.iter().map(String::as_str)
    }

    /// Records what service host `name` resolves to now, replacing what it resolved to.
    pub fn set_resolved(&self, name: &str, addresses: impl IntoIterator<Item = IpAddr>) {
        let addresses = addresses.into_iter().map(canonical).collect();
        self.resolved
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(normal_host(name), addresses);
    }

    fn is_service_address(&self, address: IpAddr) -> bool {
        self.service_literals.contains(&address)
            || self
                .resolved
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .values()
                .any(|addresses| addresses.contains(&address))
    }

    /// Checks the host name of a request before anything is resolved.
    pub fn check_host(&self, host: &str) -> Result<(), Refusal> {
        if self.service_hosts.contains(&normal_host(host)) {
            return Err(Refusal::Service);
        }
        Ok(())
    }

    /// Checks an address a request to `host` would connect to (`host` is `None` for an
    /// address literal in the URL).
    pub fn check_address(&self, host: Option<&str>, address: IpAddr) -> Result<(), Refusal> {
        let address = canonical(address);
        if self.is_service_address(address) {
            return Err(Refusal::Service);
        }
        let Some(range) = special_range(address) else {
            return Ok(());
        };
        let host = host.map(normal_host);
        let allowed = self.allow.iter().any(|rule| match rule {
            AllowRule::Range(net) => net.contains(&address),
            AllowRule::Host(name) => host.as_deref() == Some(name.as_str()),
        });
        if allowed {
            Ok(())
        } else {
            Err(Refusal::Range { address, range })
        }
    }
}

fn normal_host(host: &str) -> String {
    host.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// An IPv4 address carried in an IPv6 form (mapped `::ffff:a.b.c.d`, translated
/// `::ffff:0:a.b.c.d`, compatible `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`, 6to4
/// `2002:ab:cd::`) is judged as that IPv4 address: the kernel or a gateway would deliver
/// it there. (Local-use NAT64, `64:ff9b:1::/48`, places it by prefix length, so that whole
/// range is refused instead.)
fn canonical(address: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = address else {
        return address;
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let s = v6.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    // IPv4-translated (RFC 2765, SIIT): ::ffff:0:a.b.c.d.
    if s[..6] == [0, 0, 0, 0, 0xffff, 0] {
        return IpAddr::V4(embedded(s[6], s[7]));
    }
    if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
        return IpAddr::V4(embedded(s[6], s[7]));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return IpAddr::V4(embedded(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return IpAddr::V4(embedded(s[1], s[2]));
    }
    address
}

const V4_RANGES: &[(Ipv4Addr, u8, &str)] = &[
    (
        Ipv4Addr::new(0, 0, 0, 0),
        8,
        "unspecified (\"this network\")",
    ),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private (RFC 1918)"),
    (Ipv4Addr::new(100, 64, 0, 0), 10, "shared (CGNAT)"),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback"),
    (Ipv4Addr::new(169, 254, 0, 0), 16, "link-local"),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private (RFC 1918)"),
    (Ipv4Addr::new(192, 0, 0, 0), 24, "IETF protocol assignment"),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "private (RFC 1918)"),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "benchmarking"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved or broadcast"),
];

const V6_RANGES: &[(Ipv6Addr, u8, &str)] = &[
    (Ipv6Addr::UNSPECIFIED, 128, "unspecified"),
    (Ipv6Addr::LOCALHOST, 128, "loopback"),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        "unique-local",
    ),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, "link-local"),
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10, "site-local"),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, "multicast"),
    (
        Ipv6Addr::new(0x0100, 0, 0, 0, 0, 0, 0, 0),
        64,
        "discard-only",
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        "local-use NAT64",
    ),
];

/// Every range [`special_range`] refuses, in the form a NetworkPolicy lists them.
pub fn refused_ranges() -> Vec<IpNet> {
    let v4 = V4_RANGES
        .iter()
        .map(|&(net, prefix, _)| IpNet::V4(Ipv4Net::new(net, prefix).expect("valid prefix")));
    let v6 = V6_RANGES
        .iter()
        .map(|&(net, prefix, _)| IpNet::V6(Ipv6Net::new(net, prefix).expect("valid prefix")));
    v4.chain(v6).collect()
}

/// The name of the special-purpose range `address` is in, if any.
pub fn special_range(address: IpAddr) -> Option<&'static str> {
    match canonical(address) {
        IpAddr::V4(v4) => V4_RANGES.iter().find_map(|&(net, prefix, name)| {
            Ipv4Net::new(net, prefix)
                .expect("valid prefix")
                .contains(&v4)
                .then_some(name)
        }),
        IpAddr::V6(v6) => V6_RANGES.iter().find_map(|&(net, prefix, name)| {
            Ipv6Net::new(net, prefix)
                .expect("valid prefix")
                .contains(&v6)
                .then_some(name)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(policy: &EgressPolicy, address: &str) -> bool {
        policy
            .check_address(Some("example.com"), address.parse().unwrap())
            .is_err()
    }

    #[test]
    fn every_non_public_range_is_refused_by_default() {
        let policy = EgressPolicy::default();
        for address in [
            "127.0.0.1",
            "127.0.0.2",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "::ffff:10.0.0.1",
            "::ffff:0:a9fe:a9fe",
            "64:ff9b:1::a00:1",
        ] {
            assert!(refused(&policy, address), "{address} was allowed");
        }
    }

    #[test]
    fn public_addresses_pass() {
        let policy = EgressPolicy::default();
        for address in [
            "93.184.216.34",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!refused(&policy, address), "{address} was refused");
        }
    }

    #[test]
    fn allow_opens_a_range_or_a_host_but_never_a_service() {
        let allow = vec![
            "127.0.0.0/8".parse().unwrap(),
            "Hooks.Internal.".parse().unwrap(),
        ];
        let policy = EgressPolicy::new(allow)
            .with_service("127.0.0.1")
            .with_service("db.example.com");
        policy.set_resolved("db.example.com", ["10.9.9.8".parse().unwrap()]);
        // Resolved again after a move: the new address is refused, the old one no longer.
        policy
            .clone()
            .set_resolved("DB.example.com.", ["10.9.9.9".parse().unwrap()]);
        assert!(
            policy
                .check_address(Some("hooks.internal"), "10.9.9.8".parse().unwrap())
                .is_ok()
        );
        assert!(
            policy
                .check_address(None, "127.0.0.2".parse().unwrap())
                .is_ok()
        );
        assert_eq!(
            policy.check_address(None, "127.0.0.1".parse().unwrap()),
            Err(Refusal::Service)
        );
        assert_eq!(
            policy.check_address(None, "::ffff:127.0.0.1".parse().unwrap()),
            Err(Refusal::Service)
        );
        assert!(
            policy
                .check_address(Some("hooks.internal"), "10.2.0.1".parse().unwrap())
                .is_ok()
        );
        assert!(
            policy
                .check_address(Some("other.internal"), "10.2.0.1".parse().unwrap())
                .is_err()
        );
        assert_eq!(policy.check_host("DB.example.com."), Err(Refusal::Service));
        assert_eq!(
            policy.check_address(Some("hooks.internal"), "10.9.9.9".parse().unwrap()),
            Err(Refusal::Service)
        );
    }

    #[test]
    fn allow_rules_parse_or_say_why_not() {
        assert_eq!(
            "10.1.2.3/16".parse::<AllowRule>(),
            Ok(AllowRule::Range("10.1.0.0/16".parse().unwrap()))
        );
        assert_eq!(
            "::1".parse::<AllowRule>(),
            Ok(AllowRule::Range("::1/128".parse().unwrap()))
        );
        assert!("http://x".parse::<AllowRule>().is_err());
        assert!("::ffff:10.0.0.0/104".parse::<AllowRule>().is_err());
        assert!("".parse::<AllowRule>().is_err());
    }
}
