//! A Docker Swarm cluster of VMs from one image: the first node initializes it
//! (`--cluster init`), the others join it (`--cluster join`) over the provider's private
//! network. Each value is checked here; the join token is a secret and never shown.

use std::fmt;
use std::net::Ipv4Addr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::types::{Parsed, Problem};

/// Swarm's manager port (cluster management).
pub const MANAGER_PORT: u16 = 2377;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ClusterRole {
    /// the first node: it makes the swarm and runs the app as a service on every node
    Init,
    /// another node: it joins the swarm at first boot and runs the app's replicas
    Join,
}

/// What a node of a cluster is given.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub network: PrivateNetwork,
    pub node: Node,
}

#[derive(Debug, Clone)]
pub enum Node {
    /// The manager; `replicas: None` runs one replica on every node.
    Init { replicas: Option<u32> },
    Join {
        manager: ManagerAddr,
        token: JoinToken,
    },
}

/// The provider's private network the swarm runs on (`10.0.0.0/16`): its ports are open
/// only to it, and each node advertises its own address in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrivateNetwork {
    addr: Ipv4Addr,
    prefix: u8,
}

impl PrivateNetwork {
    pub fn parse(s: &str) -> Parsed<Self> {
        let help = "give the provider's private network as ADDRESS/PREFIX, e.g. 10.0.0.0/16 (hcloud network, DigitalOcean VPC, AWS VPC subnet)";
        let Some((addr, prefix)) = s.split_once('/') else {
            return Err(Problem::new("not a network in CIDR notation", help));
        };
        let (Ok(addr), Ok(prefix)) = (addr.parse::<Ipv4Addr>(), prefix.parse::<u8>()) else {
            return Err(Problem::new("not an IPv4 network in CIDR notation", help));
        };
        if !(8..=30).contains(&prefix) {
            return Err(Problem::new(
                format!("a /{prefix} network cannot hold a cluster"),
                "use a prefix from /8 to /30",
            ));
        }
        let net = PrivateNetwork { addr, prefix };
        if net.base() != addr {
            return Err(Problem::new(
                "the address has host bits set",
                format!("use the network's own address: {}/{prefix}", net.base()),
            ));
        }
        let shared = Ipv4Addr::new(100, 64, 0, 0);
        let in_shared = prefix >= 10 && (u32::from(addr) & mask(10)) == u32::from(shared);
        if !addr.is_private() && !in_shared {
            return Err(Problem::new(
                "not a private network: the swarm's ports would be open to the internet",
                "give the provider's private network (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 or 100.64.0.0/10)",
            ));
        }
        Ok(net)
    }

    fn base(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & mask(self.prefix))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.addr)
    }
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

impl fmt::Display for PrivateNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The manager a node joins: its private address, and Swarm's port unless another is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManagerAddr {
    pub ip: Ipv4Addr,
    pub port: u16,
}

impl ManagerAddr {
    pub fn parse(s: &str) -> Parsed<Self> {
        let help = "give the manager's address on the private network, e.g. 10.0.0.2 (port 2377) or 10.0.0.2:2377";
        let (ip, port) = match s.split_once(':') {
            Some((ip, port)) => match port.parse::<u16>() {
                Ok(p) if p > 0 => (ip, p),
                _ => {
                    return Err(Problem::new(
                        format!("{port:?} is not a port"),
                        "use a port from 1 to 65535, or leave it out for 2377",
                    ))
                }
            },
            None => (s, MANAGER_PORT),
        };
        match ip.parse::<Ipv4Addr>() {
            Ok(ip) if !ip.is_unspecified() && !ip.is_loopback() && !ip.is_broadcast() => {
                Ok(ManagerAddr { ip, port })
            }
            _ => Err(Problem::new("not an IPv4 address of another host", help)),
        }
    }
}

impl fmt::Display for ManagerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.ip, self.port)
    }
}

/// A swarm join token (`SWMTKN-1-<digest>-<secret>`), as `docker swarm join-token -q
/// worker` or `imgforge cluster token` prints it. Never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken(String);

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinToken(<hidden>)")
    }
}

impl JoinToken {
    /// The file's first line.
    pub fn parse(s: &str) -> Parsed<Self> {
        let help = "put the token `imgforge cluster token --host MANAGER` (or `docker swarm join-token -q worker` on the manager) prints in the file, on its first line";
        let token = s.lines().next().unwrap_or("").trim();
        let parts: Vec<&str> = token.split('-').collect();
        let well_formed = parts.len() == 4
            && parts[0] == "SWMTKN"
            && parts[1] == "1"
            && parts[2..].iter().all(|p| {
                (16..=100).contains(&p.len())
                    && p.chars()
                        .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
            });
        if !well_formed {
            return Err(Problem::new("the file holds no swarm join token", help));
        }
        Ok(JoinToken(token.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// `--replicas`: how many replicas of the app the swarm runs.
pub fn parse_replicas(s: &str) -> Parsed<u32> {
    match s.parse::<u32>() {
        Ok(n @ 1..=100) => Ok(n),
        _ => Err(Problem::new(
            "not a replica count",
            "run 1 to 100 replicas, or leave --replicas out for one on every node",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_networks() {
        for good in [
            "10.0.0.0/16",
            "172.31.0.0/16",
            "192.168.122.0/24",
            "100.64.0.0/10",
        ] {
            let net = PrivateNetwork::parse(good).unwrap();
            assert_eq!(net.to_string(), good);
        }
        let net = PrivateNetwork::parse("10.0.0.0/16").unwrap();
        assert!(net.contains("10.0.255.7".parse().unwrap()));
        assert!(!net.contains("10.1.0.1".parse().unwrap()));
        for (bad, words) in [
            ("10.0.0.0", "CIDR"),
            ("10.0.0.1/16", "host bits"),
            ("8.8.8.0/24", "not a private network"),
            ("100.128.0.0/16", "not a private network"),
            ("10.0.0.0/4", "cannot hold"),
            ("10.0.0.0/31", "cannot hold"),
            ("10.0.0.0/x", "CIDR"),
            ("fd00::/8", "CIDR"),
        ] {
            let p = PrivateNetwork::parse(bad).unwrap_err();
            assert!(p.message.contains(words), "{bad}: {}", p.message);
        }
    }

    #[test]
    fn manager_addresses() {
        assert_eq!(
            ManagerAddr::parse("10.0.0.2").unwrap().to_string(),
            "10.0.0.2:2377"
        );
        assert_eq!(
            ManagerAddr::parse("10.0.0.2:4000").unwrap().to_string(),
            "10.0.0.2:4000"
        );
        for bad in [
            "",
            "manager",
            "10.0.0.2:0",
            "10.0.0.2:x",
            "127.0.0.1",
            "0.0.0.0",
            "10.0.0",
        ] {
            assert!(ManagerAddr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn join_tokens() {
        let token =
            "SWMTKN-1-3pu6hszjas19xyp7ghgosyx9k8atbfcr8p2is99znpy26u2lkl-1awxwuwd3z9j1z3puu7rcgdbx";
        assert_eq!(
            JoinToken::parse(&format!("{token}\n")).unwrap().expose(),
            token
        );
        assert_eq!(
            format!("{:?}", JoinToken::parse(token).unwrap()),
            "JoinToken(<hidden>)"
        );
        for bad in [
            "",
            "SWMTKN-1-abc-def",
            "SWMTKN-2-3pu6hszjas19xyp7ghgosyx9k8atbfcr8p2is99znpy26u2lkl-1awxwuwd3z9j1z3puu7rcgdbx",
            "SWMTKN-1-3pu6hszjas19xyp7ghgosyx9k8atbfcr8p2is99znpy26u2lkl-1awxwuwd3z9j1z3puu7rcgdb$",
            "SWMTKN-1-3PU6HSZJAS19XYP7GHGOSYX9K8ATBFCR8P2IS99ZNPY26U2LKL-1awxwuwd3z9j1z3puu7rcgdbx",
        ] {
            let p = JoinToken::parse(bad).unwrap_err();
            assert!(
                !p.message.contains("SWMTKN"),
                "the token is shown: {}",
                p.message
            );
        }
    }

    #[test]
    fn replica_counts() {
        assert_eq!(parse_replicas("3").unwrap(), 3);
        for bad in ["0", "-1", "101", "three", ""] {
            assert!(parse_replicas(bad).is_err(), "{bad}");
        }
    }
}
