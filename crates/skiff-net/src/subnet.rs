//! Subnets of managed networks, as pure functions: what a CIDR must be to be usable, which
//! addresses it gives (gateway first, then guests) and whether two overlap.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The longest prefix allowed: a /29 has 8 addresses, 5 of them for guests.
pub const MAX_PREFIX: u8 = 29;
/// The shortest: a /8 (a lease's MAC holds the address's last three bytes).
pub const MIN_PREFIX: u8 = 8;

/// An IPv4 subnet a network can use: the host takes the first address as gateway, guests
/// the ones after it, up to the one before the broadcast address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet(Ipv4Net);

impl Subnet {
    /// Parses and checks a CIDR such as `10.77.0.0/24`; the error says what is wrong.
    pub fn parse(cidr: &str) -> Result<Subnet, String> {
        let net: Ipv4Net = cidr
            .parse()
            .ok()
            // Written as it prints (no leading zeros, no spaces): the OpenAPI document's
            // pattern for a subnet says as much, and the server accepts nothing else.
            .filter(|net: &Ipv4Net| net.to_string() == cidr)
            .ok_or_else(|| format!("`{cidr}` is not an IPv4 CIDR like 10.77.0.0/24"))?;
        if !(MIN_PREFIX..=MAX_PREFIX).contains(&net.prefix_len()) {
            return Err(format!(
                "`{cidr}`: the prefix must be /{MIN_PREFIX} to /{MAX_PREFIX} (a /{MAX_PREFIX} \
                 holds 5 guests)"
            ));
        }
        if net.addr() != net.network() {
            return Err(format!(
                "`{cidr}` has host bits set (the network is {})",
                net.trunc()
            ));
        }
        let a = net.network();
        if a.is_loopback()
            || a.is_multicast()
            || a.is_link_local()
            || a.octets()[0] == 0
            || a.is_broadcast()
            || a.octets()[0] >= 240
        {
            return Err(format!("`{cidr}` is a reserved range"));
        }
        Ok(Subnet(net))
    }

    pub fn net(&self) -> Ipv4Net {
        self.0
    }

    pub fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }

    /// The host's address on the network.
    pub fn gateway(&self) -> Ipv4Addr {
        offset(self.0.network(), 1)
    }

    /// How many guests the subnet holds (all but network, gateway and broadcast).
    pub fn capacity(&self) -> u32 {
        (1u32 << (32 - self.0.prefix_len())) - 3
    }

    /// The `n`th guest address (0-based), if the subnet has one.
    pub fn guest(&self, n: u32) -> Option<Ipv4Addr> {
        (n < self.capacity()).then(|| offset(self.0.network(), n + 2))
    }

    /// The address's position among the guest addresses.
    pub fn guest_index(&self, ip: Ipv4Addr) -> Option<u32> {
        let n = u32::from(ip).checked_sub(u32::from(self.0.network()) + 2)?;
        (n < self.capacity()).then_some(n)
    }

    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.0.contains(&other.0.network()) || other.0.contains(&self.0.network())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.0.contains(&ip)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

fn offset(base: Ipv4Addr, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base).wrapping_add(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_subnets_and_their_addresses() {
        let s = Subnet::parse("10.77.0.0/24").expect("valid");
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(s.capacity(), 253);
        assert_eq!(s.guest(0), Some(Ipv4Addr::new(10, 77, 0, 2)));
        assert_eq!(s.guest(252), Some(Ipv4Addr::new(10, 77, 0, 254)));
        assert_eq!(s.guest(253), None);
        assert_eq!(s.guest_index(Ipv4Addr::new(10, 77, 0, 9)), Some(7));
        assert_eq!(s.guest_index(Ipv4Addr::new(10, 77, 0, 1)), None);
        assert_eq!(s.guest_index(Ipv4Addr::new(10, 77, 0, 255)), None);
        assert_eq!(Subnet::parse("10.0.0.0/29").expect("valid").capacity(), 5);
    }

    #[test]
    fn unusable_subnets_say_why() {
        let err = |c: &str| Subnet::parse(c).expect_err(c);
        assert!(err("10.0.0.0/30").contains("/8 to /29"));
        assert!(err("10.0.0.0/7").contains("/8 to /29"));
        assert!(err("10.0.0.5/24").contains("host bits"));
        assert!(err("127.0.0.0/24").contains("reserved"));
        assert!(err("224.0.0.0/24").contains("reserved"));
        assert!(err("169.254.0.0/24").contains("reserved"));
        assert!(err("fd00::/64").contains("IPv4"));
        assert!(err("banana").contains("IPv4"));
        assert!(err("").contains("IPv4"));
        assert!(
            err("10.0.0.0/08").contains("IPv4"),
            "not written canonically"
        );
        assert!(err("010.0.0.0/8").contains("IPv4"));
        assert!(err(" 10.0.0.0/8").contains("IPv4"));
    }

    #[test]
    fn overlaps_either_way() {
        let p = |c| Subnet::parse(c).expect("valid");
        assert!(p("10.0.0.0/16").overlaps(&p("10.0.5.0/24")));
        assert!(p("10.0.5.0/24").overlaps(&p("10.0.0.0/16")));
        assert!(p("10.0.5.0/24").overlaps(&p("10.0.5.0/24")));
        assert!(!p("10.0.5.0/24").overlaps(&p("10.0.6.0/24")));
        assert!(!p("10.0.0.0/29").overlaps(&p("10.0.0.8/29")));
    }
}
