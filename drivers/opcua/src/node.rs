//! Node ids as a technician writes them in the board config (OPC UA Part 6, 5.3.1.10):
//! `ns=2;s=Filler.Temperature`, `i=2258`, `ns=3;g=…`, `ns=4;b=…`, or with the namespace named by
//! its URI (`nsu=urn:acme:plant;s=Filler.Temperature`), which survives a server that renumbers
//! its namespaces. Parsed here, without the OPC UA stack, so the config can check them.

use std::fmt;
use std::str::FromStr;

/// Which namespace a node id lives in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Namespace {
    /// `ns=N` (absent means 0, the OPC UA namespace).
    Index(u16),
    /// `nsu=URI`, looked up in the server's namespace array when connecting.
    Uri(String),
}

/// The identifier part of a node id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identifier {
    /// `i=123`
    Numeric(u32),
    /// `s=Filler.Temperature`
    String(String),
    /// `g=72962b91-fa75-4ae6-8d28-b404dc7daf63`, kept in lowercase canonical form.
    Guid(String),
    /// `b=` followed by base64, kept as written.
    Opaque(String),
}

/// A node id from the config.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeAddress {
    pub namespace: Namespace,
    pub identifier: Identifier,
}

/// Why a node id does not parse. The messages say what form is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeAddressError {
    #[error("an OPC UA node id must not be empty; write it as in `ns=2;s=Filler.Temperature`")]
    Empty,
    #[error("`{0}` is not an OPC UA node id; write `ns=<index>;s=<name>` (or i=, g=, b= for numeric, GUID and opaque ids), as in `ns=2;s=Filler.Temperature`")]
    Form(String),
    #[error("the namespace index in `{0}` must be a number from 0 to 65535")]
    NamespaceIndex(String),
    #[error("the namespace URI in `{0}` is empty")]
    NamespaceUri(String),
    #[error("the numeric identifier in `{0}` must be a number from 0 to 4294967295")]
    Numeric(String),
    #[error("the string identifier in `{0}` is empty")]
    EmptyString(String),
    #[error("the GUID in `{0}` must look like 72962b91-fa75-4ae6-8d28-b404dc7daf63")]
    Guid(String),
    #[error("the opaque identifier in `{0}` must be base64")]
    Opaque(String),
}

impl FromStr for NodeAddress {
    type Err = NodeAddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        if text.is_empty() {
            return Err(NodeAddressError::Empty);
        }
        let (namespace, rest) = if let Some(rest) = text.strip_prefix("nsu=") {
            // The URI may itself contain `;` only in theory; the identifier starts at the last
            // `;` that is followed by a type letter and `=`.
            let split = rest
                .match_indices(';')
                .map(|(i, _)| i)
                .find(|&i| is_identifier_start(&rest[i + 1..]))
                .ok_or_else(|| NodeAddressError::Form(text.to_owned()))?;
            let uri = &rest[..split];
            if uri.trim().is_empty() {
                return Err(NodeAddressError::NamespaceUri(text.to_owned()));
            }
            (Namespace::Uri(uri.to_owned()), &rest[split + 1..])
        } else if let Some(rest) = text.strip_prefix("ns=") {
            let (index, rest) = rest
                .split_once(';')
                .ok_or_else(|| NodeAddressError::Form(text.to_owned()))?;
            if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
                return Err(NodeAddressError::NamespaceIndex(text.to_owned()));
            }
            let index = index
                .parse::<u16>()
                .map_err(|_| NodeAddressError::NamespaceIndex(text.to_owned()))?;
            (Namespace::Index(index), rest)
        } else {
            (Namespace::Index(0), text)
        };
        let identifier = parse_identifier(rest, text)?;
        Ok(NodeAddress {
            namespace,
            identifier,
        })
    }
}

fn is_identifier_start(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 2 && matches!(b[0], b'i' | b's' | b'g' | b'b') && b[1] == b'='
}

fn parse_identifier(rest: &str, whole: &str) -> Result<Identifier, NodeAddressError> {
    if !is_identifier_start(rest) {
        return Err(NodeAddressError::Form(whole.to_owned()));
    }
    let value = &rest[2..];
    match rest.as_bytes()[0] {
        b'i' => {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(NodeAddressError::Numeric(whole.to_owned()));
            }
            value
                .parse::<u32>()
                .map(Identifier::Numeric)
                .map_err(|_| NodeAddressError::Numeric(whole.to_owned()))
        }
        b's' => {
            if value.is_empty() {
                Err(NodeAddressError::EmptyString(whole.to_owned()))
            } else {
                Ok(Identifier::String(value.to_owned()))
            }
        }
        b'g' => parse_guid(value)
            .map(Identifier::Guid)
            .ok_or_else(|| NodeAddressError::Guid(whole.to_owned())),
        _ => {
            if is_base64(value) {
                Ok(Identifier::Opaque(value.to_owned()))
            } else {
                Err(NodeAddressError::Opaque(whole.to_owned()))
            }
        }
    }
}

/// A GUID in 8-4-4-4-12 hex form (optionally in braces), lowercased.
fn parse_guid(s: &str) -> Option<String> {
    let s = s
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or(s);
    let groups: Vec<&str> = s.split('-').collect();
    let lengths = [8, 4, 4, 4, 12];
    if groups.len() != lengths.len() {
        return None;
    }
    for (group, len) in groups.iter().zip(lengths) {
        if group.len() != len || !group.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
    }
    Some(s.to_ascii_lowercase())
}

/// Standard base64 with padding: the alphabet, a length that is a multiple of 4, and `=` only
/// at the end. Not empty.
fn is_base64(s: &str) -> bool {
    if s.is_empty() || !s.len().is_multiple_of(4) {
        return false;
    }
    let body = s.trim_end_matches('=');
    s.len() - body.len() <= 2
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

impl fmt::Display for NodeAddress {
    /// The canonical form: `ns=0;` is left out, as servers print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Namespace::Index(0) => {}
            Namespace::Index(n) => write!(f, "ns={n};")?,
            Namespace::Uri(u) => write!(f, "nsu={u};")?,
        }
        match &self.identifier {
            Identifier::Numeric(n) => write!(f, "i={n}"),
            Identifier::String(s) => write!(f, "s={s}"),
            Identifier::Guid(g) => write!(f, "g={g}"),
            Identifier::Opaque(b) => write!(f, "b={b}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &str) -> Result<NodeAddress, NodeAddressError> {
        s.parse()
    }

    #[test]
    fn the_usual_forms_parse() {
        assert_eq!(
            parse("ns=2;s=Filler.Temperature"),
            Ok(NodeAddress {
                namespace: Namespace::Index(2),
                identifier: Identifier::String("Filler.Temperature".into())
            })
        );
        assert_eq!(
            parse("i=2258"),
            Ok(NodeAddress {
                namespace: Namespace::Index(0),
                identifier: Identifier::Numeric(2258)
            })
        );
        assert_eq!(
            parse("ns=3;g=72962B91-FA75-4AE6-8D28-B404DC7DAF63")
                .map(|n| n.to_string())
                .as_deref(),
            Ok("ns=3;g=72962b91-fa75-4ae6-8d28-b404dc7daf63")
        );
        assert_eq!(
            parse("ns=4;b=AQID").map(|n| n.identifier),
            Ok(Identifier::Opaque("AQID".into()))
        );
        assert_eq!(
            parse("nsu=urn:acme:plant;s=Filler.State").map(|n| n.namespace),
            Ok(Namespace::Uri("urn:acme:plant".into()))
        );
    }

    #[test]
    fn a_string_identifier_keeps_semicolons_and_equals_signs() {
        let n = parse("ns=2;s=a;b=c").expect("parses");
        assert_eq!(n.identifier, Identifier::String("a;b=c".into()));
        let n = parse("nsu=http://x.org/UA;v=2;s=Line1;x").expect("parses");
        assert_eq!(n.namespace, Namespace::Uri("http://x.org/UA;v=2".into()));
        assert_eq!(n.identifier, Identifier::String("Line1;x".into()));
    }

    #[test]
    fn mistakes_are_named() {
        assert_eq!(parse(""), Err(NodeAddressError::Empty));
        assert!(matches!(
            parse("Filler.Temperature"),
            Err(NodeAddressError::Form(_))
        ));
        assert!(matches!(
            parse("ns=x;s=a"),
            Err(NodeAddressError::NamespaceIndex(_))
        ));
        assert!(matches!(
            parse("ns=70000;i=1"),
            Err(NodeAddressError::NamespaceIndex(_))
        ));
        assert!(matches!(
            parse("ns=2;i=12a"),
            Err(NodeAddressError::Numeric(_))
        ));
        assert!(matches!(
            parse("ns=2;s="),
            Err(NodeAddressError::EmptyString(_))
        ));
        assert!(matches!(
            parse("ns=2;g=1234"),
            Err(NodeAddressError::Guid(_))
        ));
        assert!(matches!(
            parse("ns=2;b=***"),
            Err(NodeAddressError::Opaque(_))
        ));
        assert!(matches!(
            parse("nsu=;s=a"),
            Err(NodeAddressError::NamespaceUri(_))
        ));
        assert!(matches!(parse("ns=2"), Err(NodeAddressError::Form(_))));
        assert!(matches!(parse("ns=2;x=1"), Err(NodeAddressError::Form(_))));
    }

    #[test]
    fn namespace_zero_prints_without_its_prefix() {
        assert_eq!(parse("ns=0;i=85").expect("parses").to_string(), "i=85");
    }

    fn identifier() -> impl Strategy<Value = Identifier> {
        prop_oneof![
            any::<u32>().prop_map(Identifier::Numeric),
            "[^\\s][ -~]{0,40}".prop_map(Identifier::String),
            "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
                .prop_map(Identifier::Guid),
            "([A-Za-z0-9+/]{4}){1,8}".prop_map(Identifier::Opaque),
        ]
    }

    fn namespace() -> impl Strategy<Value = Namespace> {
        prop_oneof![
            any::<u16>().prop_map(Namespace::Index),
            "urn:[a-z0-9:./]{1,30}".prop_map(Namespace::Uri),
        ]
    }

    proptest! {
        #[test]
        fn every_node_id_prints_and_parses_back(namespace in namespace(), identifier in identifier()) {
            let node = NodeAddress { namespace, identifier };
            let text = node.to_string();
            // A string identifier with surrounding blanks would be trimmed: the config trims.
            prop_assume!(text.trim() == text);
            prop_assert_eq!(text.parse::<NodeAddress>(), Ok(node));
        }

        #[test]
        fn parsing_never_panics(s in ".{0,60}") {
            let _ = s.parse::<NodeAddress>();
        }
    }
}
