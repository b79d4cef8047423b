//! The network edge: which destination addresses Herald may send to.
//!
//! Every outbound request (attempts, the URL check, test webhooks) goes through one
//! client whose resolver applies [`EgressPolicy`] after DNS resolution, and the
//! connection goes to the address that was checked, so a name cannot be re-resolved to
//! a different address between the check and the connection. Literal addresses in a
//! URL skip the resolver and are checked by [`EgressPolicy::check_url`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::Url;

/// Why a destination was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EgressError {
    #[error("destination {0} is not a public address")]
    Blocked(IpAddr),
    #[error("plain http to {0} is not allowed; use https (or --dev for local testing)")]
    InsecureScheme(String),
    #[error("URL scheme '{0}' is not supported; use https or http")]
    Scheme(String),
    #[error("URL has no host")]
    NoHost,
}

/// Why an endpoint URL was refused before any request was made.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// Not a URL Herald can send to.
    #[error("{0}")]
    Invalid(String),
    /// A literal address the policy refuses.
    #[error("{0}")]
    Blocked(String),
}

/// The longest endpoint URL accepted, in bytes.
pub const MAX_URL: usize = 2048;

/// The resolver's own errors, found again in a request error's source chain.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("host '{host}' did not resolve: {detail}")]
    NotFound { host: String, detail: String },
    #[error("host '{host}' resolves only to addresses that are not allowed ({address})")]
    Blocked { host: String, address: IpAddr },
}

#[derive(Clone, Debug, Default)]
pub struct EgressPolicy {
    /// Loopback, private, link-local and unique-local networks, and plain http.
    pub allow_private: bool,
    /// Networks opened on purpose, such as a private network where receivers live.
    pub allow_networks: Arc<[IpNet]>,
}

impl EgressPolicy {
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        if is_metadata(ip) || ip.is_unspecified() || ip.is_multicast() {
            return false;
        }
        if self.allow_networks.iter().any(|net| net.contains(&ip)) {
            return true;
        }
        if self.allow_private {
            return !is_reserved(ip) || is_local(ip);
        }
        !is_reserved(ip) && !is_local(ip)
    }

    /// Checks a URL a caller gives for an endpoint: its form, then what the policy can
    /// tell without DNS. Credentials and fragments are refused: credentials would be
    /// shown wherever the URL is, and a fragment is never sent.
    pub fn validate_endpoint_url(&self, text: &str) -> Result<Url, UrlError> {
        let text = text.trim();
        if text.len() > MAX_URL {
            return Err(UrlError::Invalid(format!(
                "url is longer than {MAX_URL} bytes"
            )));
        }
        let url = Url::parse(text)
            .map_err(|e| UrlError::Invalid(format!("url '{text}' is not valid: {e}")))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlError::Invalid(
                "url must not carry a user name or password; put credentials in the receiver's path or query".to_string(),
            ));
        }
        if url.fragment().is_some() {
            return Err(UrlError::Invalid(format!(
                "url '{text}' must not have a #fragment"
            )));
        }
        match self.check_url(&url) {
            Ok(()) => Ok(url),
            Err(e @ EgressError::Blocked(_)) => {
                Err(UrlError::Blocked(format!("url '{text}': {e}")))
            }
            Err(e) => Err(UrlError::Invalid(format!("url '{text}': {e}"))),
        }
    }

    /// Checks what can be checked without DNS: scheme, and a literal address.
    pub fn check_url(&self, url: &Url) -> Result<(), EgressError> {
        match url.scheme() {
            "https" => {}
            "http" if self.allow_private => {}
            "http" => return Err(EgressError::InsecureScheme(url.to_string())),
            other => return Err(EgressError::Scheme(other.to_string())),
        }
        let literal = match url.host().ok_or(EgressError::NoHost)? {
            url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
            url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
            url::Host::Domain(_) => None,
        };
        match literal {
            Some(ip) if !self.allows(ip) => Err(EgressError::Blocked(ip)),
            _ => Ok(()),
        }
    }
}

/// Unwraps IPv4 carried inside IPv6 (mapped `::ffff:a.b.c.d` and NAT64 `64:ff9b::/96`),
/// so the IPv4 rules apply to it.
fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else {
        return ip;
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let s = v6.segments();
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        let o = v6.octets();
        return IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    ip
}

/// Cloud instance metadata services; never reachable, even in development mode.
fn is_metadata(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => matches!(
            v4.octets(),
            [169, 254, 169, 254] | [100, 100, 100, 200] | [169, 254, 170, 2]
        ),
        IpAddr::V6(v6) => v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254),
    }
}

/// Addresses of this host and of private networks: what development mode opens.
fn is_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}

/// Every range that is not a public unicast address.
fn is_reserved(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            is_local(ip)
                || a == 0
                || a >= 224
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 192 && b == 0 && c == 2)
                || (a == 198 && (b == 18 || b == 19))
                || (a == 198 && b == 51 && c == 100)
                || (a == 203 && b == 0 && c == 113)
                || (a == 192 && b == 88 && c == 99)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            is_local(ip)
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] == 0x2001 && s[1] == 0xdb8)
                || (s[0] == 0x64 && s[1] == 0xff9b)
                || s[0] == 0x100
                || (s[0] & 0xe000) != 0x2000
        }
    }
}

/// The resolver every outbound request uses.
#[derive(Clone)]
pub struct GuardedResolver {
    pub policy: EgressPolicy,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| ResolveError::NotFound {
                    host: host.clone(),
                    detail: e.to_string(),
                })?
                .collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| policy.allows(a.ip()))
                .collect();
            match (allowed.is_empty(), found.first()) {
                (false, _) => Ok(Box::new(allowed.into_iter()) as Addrs),
                (true, Some(first)) => Err(Box::new(ResolveError::Blocked {
                    host,
                    address: first.ip(),
                })
                    as Box<dyn std::error::Error + Send + Sync>),
                (true, None) => Err(Box::new(ResolveError::NotFound {
                    host,
                    detail: "no addresses".to_string(),
                })
                    as Box<dyn std::error::Error + Send + Sync>),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn public_policy_refuses_every_non_public_range() {
        let public = EgressPolicy {
            allow_private: false,
            ..EgressPolicy::default()
        };
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
            "169.254.169.254",
            "ff02::1",
        ] {
            assert!(!public.allows(ip(refused)), "{refused} should be refused");
        }
        for allowed in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(public.allows(ip(allowed)), "{allowed} should be allowed");
        }
    }

    #[test]
    fn development_mode_opens_local_networks_but_never_metadata() {
        let dev = EgressPolicy {
            allow_private: true,
            ..EgressPolicy::default()
        };
        for allowed in ["127.0.0.1", "10.0.0.1", "192.168.0.10", "::1", "8.8.8.8"] {
            assert!(dev.allows(ip(allowed)), "{allowed} should be allowed");
        }
        for refused in [
            "169.254.169.254",
            "fd00:ec2::254",
            "0.0.0.0",
            "::ffff:169.254.169.254",
        ] {
            assert!(!dev.allows(ip(refused)), "{refused} should be refused");
        }
    }

    #[test]
    fn an_allowed_network_opens_only_itself_and_never_metadata() {
        let policy = EgressPolicy {
            allow_private: false,
            allow_networks: vec![
                "10.1.0.0/16".parse().unwrap(),
                "169.254.0.0/16".parse().unwrap(),
            ]
            .into(),
        };
        assert!(policy.allows(ip("10.1.2.3")));
        assert!(!policy.allows(ip("10.2.0.1")));
        assert!(!policy.allows(ip("169.254.169.254")));
    }

    #[test]
    fn numeric_tricks_in_urls_are_read_as_the_address_they_mean() {
        let public = EgressPolicy {
            allow_private: false,
            ..EgressPolicy::default()
        };
        for url in [
            "https://2130706433/",
            "https://0x7f.1/",
            "https://[::ffff:7f00:1]/",
            "https://127.1/",
        ] {
            let parsed = Url::parse(url).unwrap();
            assert!(
                matches!(public.check_url(&parsed), Err(EgressError::Blocked(_))),
                "{url}"
            );
        }
        let plain = Url::parse("http://example.com/").unwrap();
        assert!(matches!(
            public.check_url(&plain),
            Err(EgressError::InsecureScheme(_))
        ));
    }
}
