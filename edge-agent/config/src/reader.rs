//! Reads one TOML table key by key with the type each key expects, reporting every wrong type
//! and, when the table is finished, every key nobody asked for (with a "did you mean"). serde
//! stops at the first error; this keeps going so a technician sees all of them.

use std::ops::{Range, RangeInclusive};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::error::Diagnostics;

pub(crate) type Span = Range<usize>;
type Node<'t, 'i> = &'t Spanned<DeValue<'i>>;

/// What reading one key gave.
#[derive(Debug)]
pub(crate) enum Val<T> {
    /// The key is not in the table.
    Absent,
    /// The key is there but its value is wrong; the error is already reported.
    Invalid,
    /// The key's value, and the span of that value.
    Present(T, Span),
}

impl<T> Val<T> {
    /// The value, or `default` when the key is absent; `None` when it was invalid.
    pub fn or(self, default: T) -> Option<T> {
        match self {
            Val::Absent => Some(default),
            Val::Invalid => None,
            Val::Present(v, _) => Some(v),
        }
    }

    /// `Some(None)` when absent, `None` when invalid.
    pub fn optional(self) -> Option<Option<(T, Span)>> {
        match self {
            Val::Absent => Some(None),
            Val::Invalid => None,
            Val::Present(v, span) => Some(Some((v, span))),
        }
    }

    pub fn present(&self) -> Option<(&T, &Span)> {
        match self {
            Val::Present(v, span) => Some((v, span)),
            _ => None,
        }
    }

    pub fn span(&self) -> Option<Span> {
        self.present().map(|(_, s)| s.clone())
    }

    /// Checks or converts a present value; `None` from `f` (which reports why) makes it invalid.
    pub fn and_then<U>(self, f: impl FnOnce(T, &Span) -> Option<U>) -> Val<U> {
        match self {
            Val::Absent => Val::Absent,
            Val::Invalid => Val::Invalid,
            Val::Present(v, span) => match f(v, &span) {
                Some(u) => Val::Present(u, span),
                None => Val::Invalid,
            },
        }
    }
}

/// "a string", "an integer": how a TOML type is named in messages.
fn article(type_str: &str) -> String {
    match type_str.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {type_str}"),
        _ => format!("a {type_str}"),
    }
}

/// One table being read. Every key asked for, present or not, becomes a known key of the table.
#[derive(Debug)]
pub(crate) struct TableReader<'t, 'i> {
    table: &'t DeTable<'i>,
    span: Span,
    /// How messages name this table: `[gateway]`, `[[device.tag]]`.
    name: String,
    known: Vec<&'static str>,
}

impl<'t, 'i> TableReader<'t, 'i> {
    pub fn new(table: &'t DeTable<'i>, span: Span, name: impl Into<String>) -> Self {
        TableReader {
            table,
            span,
            name: name.into(),
            known: Vec::new(),
        }
    }

    /// Where errors about the table as a whole point: its header.
    pub fn span(&self) -> Span {
        self.span.clone()
    }

    fn take(&mut self, key: &'static str) -> Option<Node<'t, 'i>> {
        if !self.known.contains(&key) {
            self.known.push(key);
        }
        self.table.get(key)
    }

    fn wrong_type(cx: &mut Diagnostics<'_>, node: Node<'t, 'i>, expected: &str) {
        let found = node.get_ref().type_str();
        let text = cx.map().text(&node.span());
        let hint = match (expected, node.get_ref()) {
            ("a string", DeValue::Integer(_) | DeValue::Float(_) | DeValue::Boolean(_)) => {
                Some(format!("put the value in quotes: \"{text}\""))
            }
            ("an integer" | "a number", DeValue::String(s)) if s.trim().parse::<f64>().is_ok() => {
                Some(format!("remove the quotes: {}", s.trim()))
            }
            ("a boolean", DeValue::String(s)) if matches!(s.as_ref(), "true" | "false") => {
                Some(format!("remove the quotes: {s}"))
            }
            _ => None,
        };
        cx.error(
            &node.span(),
            format!("expected {expected}, found {}", article(found)),
            hint,
        );
    }

    pub fn string(&mut self, cx: &mut Diagnostics<'_>, key: &'static str) -> Val<&'t str> {
        match self.take(key) {
            None => Val::Absent,
            Some(node) => match node.get_ref() {
                DeValue::String(s) => Val::Present(s.as_ref(), node.span()),
                _ => {
                    Self::wrong_type(cx, node, "a string");
                    Val::Invalid
                }
            },
        }
    }

    /// A string that must not be empty.
    pub fn text(&mut self, cx: &mut Diagnostics<'_>, key: &'static str) -> Val<&'t str> {
        self.string(cx, key).and_then(|s, span| {
            if s.trim().is_empty() {
                cx.error(span, format!("`{key}` must not be empty"), None);
                None
            } else {
                Some(s)
            }
        })
    }

    /// An integer within `range`, converted to the type the config holds it in.
    pub fn integer<T: TryFrom<i64>>(
        &mut self,
        cx: &mut Diagnostics<'_>,
        key: &'static str,
        range: RangeInclusive<i64>,
    ) -> Val<T> {
        let Some(node) = self.take(key) else {
            return Val::Absent;
        };
        let DeValue::Integer(int) = node.get_ref() else {
            Self::wrong_type(cx, node, "an integer");
            return Val::Invalid;
        };
        let value = i64::from_str_radix(int.as_str(), int.radix()).ok();
        match value.filter(|v| range.contains(v)) {
            Some(v) => match T::try_from(v) {
                Ok(t) => Val::Present(t, node.span()),
                Err(_) => {
                    cx.error(&node.span(), format!("`{key}` is out of range"), None);
                    Val::Invalid
                }
            },
            None => {
                cx.error(
                    &node.span(),
                    format!(
                        "`{key}` must be from {} to {}, found {}",
                        range.start(),
                        range.end(),
                        cx.map().text(&node.span())
                    ),
                    None,
                );
                Val::Invalid
            }
        }
    }

    /// A number; integers are fine where a float is expected (`scale = 2`).
    pub fn number(&mut self, cx: &mut Diagnostics<'_>, key: &'static str) -> Val<f64> {
        let Some(node) = self.take(key) else {
            return Val::Absent;
        };
        let value = match node.get_ref() {
            DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                // Exactness past 2^53 does not matter for a scale or a deadband.
                .map(|v| v as f64),
            _ => {
                Self::wrong_type(cx, node, "a number");
                return Val::Invalid;
            }
        };
        match value {
            Some(v) => Val::Present(v, node.span()),
            None => {
                cx.error(
                    &node.span(),
                    format!("`{key}` is not a usable number"),
                    None,
                );
                Val::Invalid
            }
        }
    }

    pub fn boolean(&mut self, cx: &mut Diagnostics<'_>, key: &'static str) -> Val<bool> {
        match self.take(key) {
            None => Val::Absent,
            Some(node) => match node.get_ref() {
                DeValue::Boolean(b) => Val::Present(*b, node.span()),
                _ => {
                    Self::wrong_type(cx, node, "a boolean");
                    Val::Invalid
                }
            },
        }
    }

    /// A string naming one of `options`; names in `unsupported` are recognised but refused
    /// with their own hint.
    pub fn choice<T: Copy>(
        &mut self,
        cx: &mut Diagnostics<'_>,
        key: &'static str,
        options: &[(&str, T)],
        unsupported: &[(&str, &str)],
    ) -> Val<T> {
        self.string(cx, key).and_then(|s, span| {
            if let Some((_, v)) = options.iter().find(|(name, _)| *name == s) {
                return Some(*v);
            }
            if let Some((name, hint)) = unsupported.iter().find(|(name, _)| *name == s) {
                cx.error(
                    span,
                    format!("{key} `{name}` is not supported by this version"),
                    Some((*hint).to_owned()),
                );
                return None;
            }
            let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
            let hint = match did_you_mean(s, names.iter().copied()) {
                Some(best) => format!("did you mean `{best}`?"),
                None => format!("use {}", quoted_list(&names)),
            };
            cx.error(span, format!("unknown {key} `{s}`"), Some(hint));
            None
        })
    }

    /// A sub-table (`[store]`, or an inline table).
    pub fn table(
        &mut self,
        cx: &mut Diagnostics<'_>,
        key: &'static str,
    ) -> Val<TableReader<'t, 'i>> {
        self.table_named(cx, key, &format!("[{key}]"))
    }

    /// A sub-table named `name` in messages, as in `[machine.dispatch]`.
    pub fn table_named(
        &mut self,
        cx: &mut Diagnostics<'_>,
        key: &'static str,
        name: &str,
    ) -> Val<TableReader<'t, 'i>> {
        let name = name.to_owned();
        let Some(node) = self.take(key) else {
            return Val::Absent;
        };
        match node.get_ref() {
            DeValue::Table(t) => Val::Present(TableReader::new(t, node.span(), name), node.span()),
            DeValue::Array(a) if a.iter().all(|v| v.get_ref().is_table()) && !a.is_empty() => {
                cx.structural(
                    &self.key_span(key).unwrap_or_else(|| node.span()),
                    format!("expected one table {name}, found an array of tables"),
                    Some(format!("write {name} once, with single brackets")),
                );
                Val::Invalid
            }
            _ => {
                Self::wrong_type(cx, node, "a table");
                Val::Invalid
            }
        }
    }

    /// An array of strings, each with its span.
    pub fn strings(
        &mut self,
        cx: &mut Diagnostics<'_>,
        key: &'static str,
    ) -> Val<Vec<(&'t str, Span)>> {
        let Some(node) = self.take(key) else {
            return Val::Absent;
        };
        let DeValue::Array(a) = node.get_ref() else {
            Self::wrong_type(cx, node, "an array of strings");
            return Val::Invalid;
        };
        let mut out = Vec::with_capacity(a.len());
        let mut ok = true;
        for item in a.iter() {
            match item.get_ref() {
                DeValue::String(s) => out.push((s.as_ref(), item.span())),
                _ => {
                    Self::wrong_type(cx, item, "a string");
                    ok = false;
                }
            }
        }
        if ok {
            Val::Present(out, node.span())
        } else {
            Val::Invalid
        }
    }

    /// An array of tables (`[[device]]`); each table is named `name` in messages.
    pub fn tables(
        &mut self,
        cx: &mut Diagnostics<'_>,
        key: &'static str,
        name: &str,
    ) -> Val<Vec<TableReader<'t, 'i>>> {
        let Some(node) = self.take(key) else {
            return Val::Absent;
        };
        match node.get_ref() {
            DeValue::Array(a) => {
                let mut tables = Vec::with_capacity(a.len());
                let mut ok = true;
                for item in a.iter() {
                    match item.get_ref() {
                        DeValue::Table(t) => {
                            tables.push(TableReader::new(t, item.span(), name));
                        }
                        _ => {
                            Self::wrong_type(cx, item, "a table");
                            ok = false;
                        }
                    }
                }
                if ok {
                    Val::Present(tables, node.span())
                } else {
                    Val::Invalid
                }
            }
            DeValue::Table(_) => {
                cx.structural(
                    &self.key_span(key).unwrap_or_else(|| node.span()),
                    format!("expected {name} (an array of tables), found a single table"),
                    Some(format!(
                        "write {name} with double brackets; each one adds another"
                    )),
                );
                Val::Invalid
            }
            _ => {
                Self::wrong_type(cx, node, &format!("{name} (an array of tables)"));
                Val::Invalid
            }
        }
    }

    /// Where the value of `key` is, if the table has it (for errors about a key read elsewhere).
    pub fn value_span(&self, key: &str) -> Option<Span> {
        self.table.get(key).map(|v| v.span())
    }

    fn key_span(&self, key: &str) -> Option<Span> {
        self.table.get_key_value(key).map(|(k, _)| k.span())
    }

    /// The value of a key that must be there; `example` shows how to write it.
    pub fn require<T>(
        &self,
        cx: &mut Diagnostics<'_>,
        key: &str,
        val: Val<T>,
        example: &str,
    ) -> Option<(T, Span)> {
        match val {
            Val::Present(v, span) => Some((v, span)),
            Val::Invalid => None,
            Val::Absent => {
                cx.structural(
                    &self.span,
                    format!("missing `{key}` in {}", self.name),
                    Some(format!("add a line like `{example}`")),
                );
                None
            }
        }
    }

    /// Reports every key of the table that was never asked for.
    pub fn finish(self, cx: &mut Diagnostics<'_>) {
        for (key, _) in self.table.iter() {
            let name = key.get_ref().as_ref();
            if self.known.contains(&name) {
                continue;
            }
            let hint = match did_you_mean(name, self.known.iter().copied()) {
                Some(best) => format!("did you mean `{best}`?"),
                None => {
                    let mut known = self.known.clone();
                    known.sort_unstable();
                    format!("the keys of {} are {}", self.name, quoted_list(&known))
                }
            };
            cx.error(
                &key.span(),
                format!("unknown key `{name}` in {}", self.name),
                Some(hint),
            );
        }
    }
}

/// "`a`, `b` or `c`"
pub(crate) fn quoted_list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// The candidate closest to `word` by edit distance (case-insensitive, a swap of two
/// neighbouring letters counts as one edit), if it is close enough to be a likely typo.
pub(crate) fn did_you_mean<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let word_lower = word.to_lowercase();
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (edit_distance(&word_lower, &c.to_lowercase()), c))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// Optimal string alignment distance: insertions, deletions, substitutions and transpositions
/// of adjacent characters, each costing one.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    // Three rows: two back (for transpositions), one back, and the current one.
    let mut before: Vec<usize> = vec![0; width];
    let mut previous: Vec<usize> = (0..width).collect();
    let mut current: Vec<usize> = vec![0; width];
    for i in 1..=a.len() {
        current[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (previous[j] + 1)
                .min(current[j - 1] + 1)
                .min(previous[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(before[j - 2] + 1);
            }
            current[j] = best;
        }
        std::mem::swap(&mut before, &mut previous);
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_typos_as_technicians_make_them() {
        assert_eq!(edit_distance("adress", "address"), 1);
        assert_eq!(edit_distance("tpye", "type"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn did_you_mean_suggests_only_close_candidates() {
        let keys = ["name", "address", "type", "byte_order", "poll_interval_ms"];
        assert_eq!(did_you_mean("adress", keys), Some("address"));
        assert_eq!(did_you_mean("Address", keys), Some("address"));
        assert_eq!(did_you_mean("byteorder", keys), Some("byte_order"));
        assert_eq!(
            did_you_mean("poll_interval", keys),
            Some("poll_interval_ms")
        );
        assert_eq!(did_you_mean("colour", keys), None);
        assert_eq!(did_you_mean("x", keys), None);
    }

    #[test]
    fn lists_read_as_a_sentence() {
        assert_eq!(quoted_list(&["a"]), "`a`");
        assert_eq!(quoted_list(&["a", "b", "c"]), "`a`, `b` or `c`");
        assert_eq!(quoted_list(&[]), "");
    }

    #[test]
    fn types_take_the_right_article() {
        assert_eq!(article("integer"), "an integer");
        assert_eq!(article("array"), "an array");
        assert_eq!(article("string"), "a string");
    }
}
