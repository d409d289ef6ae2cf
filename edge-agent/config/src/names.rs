//! Names that end up in MQTT topics (gateway id, device and tag names, UNS levels) and the
//! rule that names are unique. Checked here once so that no topic can be malformed later.

use std::collections::HashMap;

use crate::error::Diagnostics;
use crate::reader::Span;

/// Topic levels starting with `_` belong to the agent (`_batch`, `_gateway`, `_mes`, `_set`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Underscore {
    Allowed,
    Reserved,
}

/// Checks a name made of `[A-Za-z0-9_-]+`; `what` names it in messages ("device name").
pub(crate) fn check_name(
    cx: &mut Diagnostics<'_>,
    span: &Span,
    what: &str,
    name: &str,
    underscore: Underscore,
) -> bool {
    if name.is_empty() {
        cx.error(span, format!("the {what} must not be empty"), None);
        return false;
    }
    if let Some(bad) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    {
        let suggestion: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        cx.error(
            span,
            format!("the {what} `{name}` contains `{bad}`; use only letters, digits, `-` and `_`"),
            Some(format!(
                "it becomes part of MQTT topics; for example `{suggestion}`"
            )),
        );
        return false;
    }
    if underscore == Underscore::Reserved && name.starts_with('_') {
        cx.error(
            span,
            format!("the {what} `{name}` must not start with `_`"),
            Some(
                "topic levels starting with `_` are reserved for the agent (`_batch`, `_gateway`, `_mes`, `_set`)"
                    .to_owned(),
            ),
        );
        return false;
    }
    true
}

/// Checks one level of the Unified Namespace path (`enterprise`, `site`, `area`, `line`).
pub(crate) fn check_topic_level(
    cx: &mut Diagnostics<'_>,
    span: &Span,
    key: &str,
    level: &str,
) -> bool {
    if level.is_empty() {
        cx.error(span, format!("`{key}` must not be empty"), None);
        return false;
    }
    if let Some(bad) = level.chars().find(|c| matches!(c, '+' | '#' | '/' | '\0')) {
        cx.error(
            span,
            format!("`{key}` contains `{}`, which cannot appear in one MQTT topic level", bad.escape_default()),
            Some("`+` and `#` are MQTT wildcards and `/` separates levels; each of enterprise, site, area and line is one level".to_owned()),
        );
        return false;
    }
    true
}

/// Checks a topic root such as `acme/plant1/packaging/line1`.
pub(crate) fn check_topic_root(cx: &mut Diagnostics<'_>, span: &Span, root: &str) -> bool {
    let problem = if root.is_empty() {
        Some("`topic_root` must not be empty")
    } else if root.contains(['+', '#']) {
        Some("`topic_root` must not contain the MQTT wildcards `+` or `#`")
    } else if root.contains('\0') {
        Some("`topic_root` must not contain a NUL character")
    } else if root.starts_with('/') || root.ends_with('/') {
        Some("`topic_root` must not start or end with `/`")
    } else if root.contains("//") {
        Some("`topic_root` must not contain an empty level (`//`)")
    } else {
        None
    };
    match problem {
        Some(message) => {
            cx.error(
                span,
                message,
                Some("write the levels separated by single slashes, as in `acme/plant1/packaging/line1`".to_owned()),
            );
            false
        }
        None => true,
    }
}

/// Remembers names already given, to report a duplicate at its second use.
#[derive(Debug)]
pub(crate) struct UniqueNames {
    /// "device name"
    what: &'static str,
    /// Where the names must be unique, for messages: "" or " in device `filler`".
    scope: String,
    lines: HashMap<String, usize>,
}

impl UniqueNames {
    pub fn new(what: &'static str, scope: impl Into<String>) -> Self {
        UniqueNames {
            what,
            scope: scope.into(),
            lines: HashMap::new(),
        }
    }

    pub fn insert(&mut self, cx: &mut Diagnostics<'_>, span: &Span, name: &str) -> bool {
        let line = cx.line_of(span);
        match self.lines.get(name) {
            Some(&first) => {
                cx.error(
                    span,
                    format!(
                        "duplicate {} `{name}`{}: already used on line {first}",
                        self.what, self.scope
                    ),
                    Some("names must be unique; rename one of them".to_owned()),
                );
                false
            }
            None => {
                self.lines.insert(name.to_owned(), line);
                true
            }
        }
    }
}
