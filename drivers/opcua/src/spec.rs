//! What the OPC UA driver is told about one server and its tags: endpoint, security, identity,
//! timing, and per tag its node id and whether it is subscribed to or polled. Plain data with
//! no OPC UA stack in it, so the board config can build and check it on its own.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use edge_model::{DataType, DeviceId, TagName};

use crate::node::NodeAddress;

/// The message security policy of the connection. The deprecated Basic128Rsa15 and Basic256
/// (SHA-1) policies are not offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecurityPolicy {
    None,
    Basic256Sha256,
    Aes128Sha256RsaOaep,
    Aes256Sha256RsaPss,
}

impl SecurityPolicy {
    /// Every policy, in the order `check` and the browse help list them.
    pub const ALL: [SecurityPolicy; 4] = [
        SecurityPolicy::None,
        SecurityPolicy::Basic256Sha256,
        SecurityPolicy::Aes128Sha256RsaOaep,
        SecurityPolicy::Aes256Sha256RsaPss,
    ];

    /// The name used in the config and on the command line: the last part of the policy URI.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityPolicy::None => "None",
            SecurityPolicy::Basic256Sha256 => "Basic256Sha256",
            SecurityPolicy::Aes128Sha256RsaOaep => "Aes128_Sha256_RsaOaep",
            SecurityPolicy::Aes256Sha256RsaPss => "Aes256_Sha256_RsaPss",
        }
    }

    /// The policy URI of OPC UA Part 7.
    pub fn uri(self) -> &'static str {
        match self {
            SecurityPolicy::None => "http://opcfoundation.org/UA/SecurityPolicy#None",
            SecurityPolicy::Basic256Sha256 => {
                "http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256"
            }
            SecurityPolicy::Aes128Sha256RsaOaep => {
                "http://opcfoundation.org/UA/SecurityPolicy#Aes128_Sha256_RsaOaep"
            }
            SecurityPolicy::Aes256Sha256RsaPss => {
                "http://opcfoundation.org/UA/SecurityPolicy#Aes256_Sha256_RsaPss"
            }
        }
    }

    /// The policy of a URI a server advertises, if it is one of ours.
    pub fn from_uri(uri: &str) -> Option<SecurityPolicy> {
        Self::ALL.into_iter().find(|p| p.uri() == uri)
    }
}

impl fmt::Display for SecurityPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a security policy or mode name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecurityNameError {
    #[error("unknown security policy `{0}`; use None, Basic256Sha256, Aes128_Sha256_RsaOaep or Aes256_Sha256_RsaPss")]
    UnknownPolicy(String),
    #[error("security policy `{0}` is deprecated (SHA-1) and not offered; use Basic256Sha256, Aes128_Sha256_RsaOaep or Aes256_Sha256_RsaPss")]
    DeprecatedPolicy(String),
    #[error("unknown security mode `{0}`; use None, Sign or SignAndEncrypt")]
    UnknownMode(String),
}

impl FromStr for SecurityPolicy {
    type Err = SecurityNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let s = s
            .strip_prefix("http://opcfoundation.org/UA/SecurityPolicy#")
            .unwrap_or(s);
        if let Some(p) = Self::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
        {
            return Ok(p);
        }
        // The policy names are also written without underscores.
        let squashed: String = s.chars().filter(|c| *c != '_').collect();
        if let Some(p) = Self::ALL
            .into_iter()
            .find(|p| p.as_str().replace('_', "").eq_ignore_ascii_case(&squashed))
        {
            return Ok(p);
        }
        if s.eq_ignore_ascii_case("Basic128Rsa15") || s.eq_ignore_ascii_case("Basic256") {
            return Err(SecurityNameError::DeprecatedPolicy(s.to_owned()));
        }
        Err(SecurityNameError::UnknownPolicy(s.to_owned()))
    }
}

/// The message security mode of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecurityMode {
    None,
    Sign,
    SignAndEncrypt,
}

impl SecurityMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityMode::None => "None",
            SecurityMode::Sign => "Sign",
            SecurityMode::SignAndEncrypt => "SignAndEncrypt",
        }
    }
}

impl fmt::Display for SecurityMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SecurityMode {
    type Err = SecurityNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        [
            SecurityMode::None,
            SecurityMode::Sign,
            SecurityMode::SignAndEncrypt,
        ]
        .into_iter()
        .find(|m| m.as_str().eq_ignore_ascii_case(s))
        .ok_or_else(|| SecurityNameError::UnknownMode(s.to_owned()))
    }
}

/// Policy and mode must agree: no security with None, some security with anything else.
pub fn security_is_consistent(policy: SecurityPolicy, mode: SecurityMode) -> bool {
    (policy == SecurityPolicy::None) == (mode == SecurityMode::None)
}

/// A password that never appears in a log line or a debug print.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(value: impl Into<String>) -> Self {
        Password(value.into())
    }

    /// The password itself, for the one place that needs it (ActivateSession).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Who the gateway says it is when it activates a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Anonymous,
    UserName {
        user: String,
        password: Password,
    },
    /// A user certificate (DER or PEM) and its private key (PEM).
    X509 {
        cert: PathBuf,
        key: PathBuf,
    },
}

impl Identity {
    pub fn describe(&self) -> String {
        match self {
            Identity::Anonymous => "anonymous".to_owned(),
            Identity::UserName { user, .. } => format!("user {user}"),
            Identity::X509 { cert, .. } => format!("x509 {}", cert.display()),
        }
    }
}

/// Where the gateway keeps its application instance certificate and the certificates of the
/// servers it trusts or has rejected, and how it treats an unknown server certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiSettings {
    /// `{data_dir}/pki`: `own/`, `private/`, `trusted/`, `rejected/`.
    pub dir: PathBuf,
    /// The gateway's application URI, also written into its certificate.
    pub application_uri: String,
    pub application_name: String,
    /// Trust an unknown server certificate on first use (logged as a warning) instead of
    /// rejecting it.
    pub trust_on_first_use: bool,
    /// The config file, named in the command that trusts a rejected certificate.
    pub config_path: Option<PathBuf>,
}

/// Server-side filtering of a subscribed value (a DataChangeFilter).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Deadband {
    None,
    /// Report a change only when it exceeds this many engineering units.
    Absolute(f64),
    /// Report a change only when it exceeds this percentage of the variable's EURange.
    Percent(f64),
}

/// How a tag's values reach the gateway.
#[derive(Debug, Clone, PartialEq)]
pub enum TagMode {
    /// A monitored item: the server samples and reports changes.
    Subscription {
        /// The subscription's publishing interval (tags with the same one share it).
        publishing_interval: Duration,
        /// How often the server samples the value (0: as fast as the server can).
        sampling_interval: Duration,
        /// Changes the server keeps between two publishes (oldest dropped first).
        queue_size: u32,
        deadband: Deadband,
    },
    /// The Read service on a schedule.
    Polling {
        interval: Duration,
        /// Report-by-exception on the gateway: only changes beyond this are stored.
        deadband: Option<f64>,
        /// With a deadband, store the value at least this often.
        heartbeat: Option<Duration>,
    },
}

impl TagMode {
    pub fn is_subscription(&self) -> bool {
        matches!(self, TagMode::Subscription { .. })
    }
}

/// One tag of an OPC UA device.
#[derive(Debug, Clone, PartialEq)]
pub struct TagSpec {
    pub name: TagName,
    pub node: NodeAddress,
    /// The type values are converted to; `None` keeps the server's type.
    pub data_type: Option<DataType>,
    /// Numeric values are stored as `raw * scale + offset`.
    pub scale: f64,
    pub offset: f64,
    pub mode: TagMode,
    /// Commands may write this tag (the variable's data type is enforced).
    pub writable: bool,
}

/// One OPC UA server.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSpec {
    pub name: DeviceId,
    /// `opc.tcp://host:port[/path]`
    pub endpoint: String,
    pub security_policy: SecurityPolicy,
    pub security_mode: SecurityMode,
    pub identity: Identity,
    /// Requested session timeout (the server may revise it).
    pub session_timeout: Duration,
    /// Bound on every request, and on connecting.
    pub request_timeout: Duration,
    /// How often the session is checked with a Read of the server state; two failed checks in
    /// a row drop the connection.
    pub keep_alive: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Upper bound on nodes per Read request besides the server's own MaxNodesPerRead
    /// (0: only the server's).
    pub max_nodes_per_read: u32,
    pub pki: PkiSettings,
    pub tags: Vec<TagSpec>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_parse_in_the_forms_technicians_write() {
        for (text, policy) in [
            ("None", SecurityPolicy::None),
            ("basic256sha256", SecurityPolicy::Basic256Sha256),
            ("Aes128_Sha256_RsaOaep", SecurityPolicy::Aes128Sha256RsaOaep),
            ("Aes128Sha256RsaOaep", SecurityPolicy::Aes128Sha256RsaOaep),
            ("Aes256_Sha256_RsaPss", SecurityPolicy::Aes256Sha256RsaPss),
            (
                "http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256",
                SecurityPolicy::Basic256Sha256,
            ),
        ] {
            assert_eq!(text.parse::<SecurityPolicy>(), Ok(policy), "{text}");
        }
        assert!(matches!(
            "Basic128Rsa15".parse::<SecurityPolicy>(),
            Err(SecurityNameError::DeprecatedPolicy(_))
        ));
        assert!(matches!(
            "Basic512".parse::<SecurityPolicy>(),
            Err(SecurityNameError::UnknownPolicy(_))
        ));
    }

    #[test]
    fn every_policy_round_trips_through_its_name_and_uri() {
        for p in SecurityPolicy::ALL {
            assert_eq!(p.as_str().parse::<SecurityPolicy>(), Ok(p));
            assert_eq!(SecurityPolicy::from_uri(p.uri()), Some(p));
        }
    }

    #[test]
    fn modes_parse_and_must_agree_with_the_policy() {
        assert_eq!(
            "signandencrypt".parse::<SecurityMode>(),
            Ok(SecurityMode::SignAndEncrypt)
        );
        assert!("Encrypt".parse::<SecurityMode>().is_err());
        assert!(security_is_consistent(
            SecurityPolicy::None,
            SecurityMode::None
        ));
        assert!(security_is_consistent(
            SecurityPolicy::Basic256Sha256,
            SecurityMode::Sign
        ));
        assert!(!security_is_consistent(
            SecurityPolicy::None,
            SecurityMode::Sign
        ));
        assert!(!security_is_consistent(
            SecurityPolicy::Basic256Sha256,
            SecurityMode::None
        ));
    }

    #[test]
    fn a_password_is_never_printed() {
        let id = Identity::UserName {
            user: "op".into(),
            password: Password::new("hunter2"),
        };
        assert!(!format!("{id:?}").contains("hunter2"));
    }
}
