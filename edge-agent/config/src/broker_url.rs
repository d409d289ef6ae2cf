//! MQTT broker addresses as written in the config: `mqtt://host[:port]` or
//! `mqtts://host[:port]`, IPv6 literals in brackets. Credentials never go in the url; they have
//! their own keys so that they can come from a file or the environment.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

/// Where a northbound connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// `mqtts://`: connect over TLS.
    pub tls: bool,
    /// Host name or IP address, IPv6 without brackets.
    pub host: String,
    /// TCP port; 1883 by default for `mqtt://`, 8883 for `mqtts://`.
    pub port: u16,
}

impl BrokerUrl {
    pub const DEFAULT_PORT: u16 = 1883;
    pub const DEFAULT_TLS_PORT: u16 = 8883;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerUrlError {
    #[error("`{0}` is not a broker url; write mqtt://host[:port] or mqtts://host[:port]")]
    NoScheme(String),
    #[error("unsupported scheme `{0}://`; use mqtt:// or mqtts://")]
    Scheme(String),
    // The url is not repeated: it may hold a password.
    #[error("the broker url must not contain a user name or password; use `username` and `password_env` or `password_file`")]
    UserInfo,
    #[error("the broker url has no host")]
    EmptyHost,
    #[error("`{0}` is not a valid host name or IP address")]
    BadHost(String),
    #[error("port `{0}` is not a number from 1 to 65535")]
    BadPort(String),
    #[error("a broker url has no path, query or fragment (`{0}`)")]
    Path(String),
}

impl FromStr for BrokerUrl {
    type Err = BrokerUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains('@') {
            return Err(BrokerUrlError::UserInfo);
        }
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| BrokerUrlError::NoScheme(s.to_owned()))?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" => false,
            "mqtts" => true,
            _ => return Err(BrokerUrlError::Scheme(scheme.to_owned())),
        };
        // A lone trailing slash is harmless; any other path is a mistake worth reporting.
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if let Some(i) = rest.find(['/', '?', '#']) {
            return Err(BrokerUrlError::Path(rest[i..].to_owned()));
        }
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| BrokerUrlError::BadHost(rest.to_owned()))?;
            if host.parse::<Ipv6Addr>().is_err() {
                return Err(BrokerUrlError::BadHost(host.to_owned()));
            }
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| BrokerUrlError::BadHost(rest.to_owned()))?,
                ),
            };
            (host, port)
        } else {
            match rest.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(BrokerUrlError::EmptyHost);
        }
        if !rest.starts_with('[') && !is_host_name(host) {
            return Err(BrokerUrlError::BadHost(host.to_owned()));
        }
        let port = match port {
            None if tls => Self::DEFAULT_TLS_PORT,
            None => Self::DEFAULT_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| BrokerUrlError::BadPort(p.to_owned()))?,
        };
        Ok(BrokerUrl {
            tls,
            host: host.to_owned(),
            port,
        })
    }
}

/// A DNS name or an IPv4 address: letters, digits, `-`, `_` and `.`.
pub(crate) fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(tls: bool, host: &str, port: u16) -> BrokerUrl {
        BrokerUrl {
            tls,
            host: host.into(),
            port,
        }
    }

    #[test]
    fn broker_urls_parse_with_default_ports() {
        assert_eq!(
            "mqtt://127.0.0.1".parse(),
            Ok(url(false, "127.0.0.1", 1883))
        );
        assert_eq!(
            "mqtts://broker.acme".parse(),
            Ok(url(true, "broker.acme", 8883))
        );
        assert_eq!("mqtt://broker:1884".parse(), Ok(url(false, "broker", 1884)));
        assert_eq!("MQTTS://broker:443/".parse(), Ok(url(true, "broker", 443)));
        assert_eq!("mqtt://[::1]".parse(), Ok(url(false, "::1", 1883)));
        assert_eq!(
            "mqtts://[fe80::1]:9000".parse(),
            Ok(url(true, "fe80::1", 9000))
        );
    }

    #[test]
    fn broker_urls_print_back_with_their_port() {
        for s in [
            "mqtt://127.0.0.1:1883",
            "mqtts://[::1]:8883",
            "mqtts://b.example:1",
        ] {
            let parsed: BrokerUrl = s.parse().expect(s);
            assert_eq!(parsed.to_string(), s);
        }
    }

    #[test]
    fn malformed_broker_urls_say_what_is_wrong() {
        use BrokerUrlError::*;
        let cases: [(&str, BrokerUrlError); 10] = [
            ("127.0.0.1:1883", NoScheme("127.0.0.1:1883".into())),
            ("tcp://broker", Scheme("tcp".into())),
            ("mqtt://user:pw@broker", UserInfo),
            ("mqtt://", EmptyHost),
            ("mqtt://:1883", EmptyHost),
            ("mqtt://bro ker", BadHost("bro ker".into())),
            ("mqtt://[::g]:1", BadHost("::g".into())),
            ("mqtt://broker:0", BadPort("0".into())),
            ("mqtt://broker:65536", BadPort("65536".into())),
            ("mqtt://broker/plant", Path("/plant".into())),
        ];
        for (s, expected) in cases {
            assert_eq!(s.parse::<BrokerUrl>(), Err(expected), "{s}");
        }
    }

    #[test]
    fn a_password_in_the_url_is_not_repeated_in_the_error() {
        let error = "mqtt://user:hunter2@broker"
            .parse::<BrokerUrl>()
            .expect_err("user info is refused");
        assert!(!error.to_string().contains("hunter2"));
    }
}
