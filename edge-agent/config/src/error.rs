//! Errors a technician reads: each one names file:line:column of the board config, shows the
//! line with carets under the mistake, and says what to do. `Diagnostics` collects them while
//! the config is read, so that one run of `edge-agent check` shows every mistake at once.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::path::Path;

/// One mistake in a board config, positioned in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file, as it was named when loaded.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters (not bytes).
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// What to do about it, when there is something useful to say.
    pub hint: Option<String>,
    /// The text of the line the error points at, shown under the message; empty when there is
    /// no line to show (an unreadable file).
    pub source_line: String,
    /// How many characters from `column` on are underlined (at least 1).
    pub width: usize,
}

impl ConfigError {
    /// An error about the file as a whole (it could not be read), placed at 1:1.
    pub fn whole_file(file: &Path, message: impl Into<String>, hint: Option<String>) -> Self {
        ConfigError {
            file: file.display().to_string(),
            line: 1,
            column: 1,
            message: message.into(),
            hint,
            source_line: String::new(),
            width: 1,
        }
    }
}

impl fmt::Display for ConfigError {
    /// rustc-like, plain text:
    ///
    /// ```text
    /// board.toml:12:1: unknown key `adress` in [[device.tag]]
    ///    |
    /// 12 | adress = "hr:100"
    ///    | ^^^^^^
    ///   hint: did you mean `address`?
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )?;
        if !self.source_line.is_empty() {
            let number = self.line.to_string();
            let gutter = " ".repeat(number.len());
            // Tabs before the column are kept so the carets line up in any terminal.
            let pad: String = self
                .source_line
                .chars()
                .take(self.column.saturating_sub(1))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            write!(
                f,
                "\n{gutter} |\n{number} | {}\n{gutter} | {pad}{}",
                self.source_line,
                "^".repeat(self.width.max(1))
            )?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Every mistake found in one board config, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for error in &self.0 {
            write!(f, "{error}\n\n")?;
        }
        match self.0.len() {
            1 => write!(f, "1 error"),
            n => write!(f, "{n} errors"),
        }
    }
}

impl std::error::Error for ConfigErrors {}

/// Where a byte span of the source lies, in the terms a technician counts in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Location {
    pub line: usize,
    pub column: usize,
    pub text: String,
    pub width: usize,
}

/// Turns byte offsets into 1-based lines and character columns.
#[derive(Debug)]
pub(crate) struct SourceMap<'s> {
    src: &'s str,
    /// Byte offset at which each line starts; the first is always 0.
    line_starts: Vec<usize>,
}

impl<'s> SourceMap<'s> {
    pub fn new(src: &'s str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(
            src.bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i + 1),
        );
        SourceMap { src, line_starts }
    }

    /// The source text of a span, or "" if the span does not fall on character boundaries.
    pub fn text(&self, span: &Range<usize>) -> &'s str {
        self.src.get(span.clone()).unwrap_or("")
    }

    fn floor_boundary(&self, offset: usize) -> usize {
        let mut offset = offset.min(self.src.len());
        while !self.src.is_char_boundary(offset) {
            offset -= 1;
        }
        offset
    }

    /// The first line after `line` that starts a table header, or one past the last line.
    pub fn next_header_line(&self, line: usize) -> usize {
        let mut next = line + 1;
        while let Some(&start) = self.line_starts.get(next - 1) {
            let end = self
                .line_starts
                .get(next)
                .map_or(self.src.len(), |&e| e - 1);
            let text = self.src.get(start..end).unwrap_or("");
            if text.trim_start().starts_with('[') {
                return next;
            }
            next += 1;
        }
        next
    }

    pub fn locate(&self, span: &Range<usize>) -> Location {
        let start = self.floor_boundary(span.start);
        let index = self
            .line_starts
            .partition_point(|&s| s <= start)
            .saturating_sub(1);
        let line_start = self.line_starts.get(index).copied().unwrap_or(0);
        let line_end = match self.line_starts.get(index + 1) {
            Some(&next) => next - 1,
            None => self.src.len(),
        };
        let text = self.src.get(line_start..line_end).unwrap_or("");
        let text = text.strip_suffix('\r').unwrap_or(text);
        let text_end = line_start + text.len();
        let column = self
            .src
            .get(line_start..start)
            .unwrap_or("")
            .chars()
            .count()
            + 1;
        let end = self.floor_boundary(span.end.min(text_end)).max(start);
        let width = self
            .src
            .get(start..end)
            .unwrap_or("")
            .chars()
            .count()
            .max(1);
        Location {
            line: index + 1,
            column,
            text: text.to_owned(),
            width,
        }
    }
}

/// Collects the errors of one config while it is read.
#[derive(Debug)]
pub(crate) struct Diagnostics<'s> {
    map: SourceMap<'s>,
    file: String,
    errors: Vec<ConfigError>,
    /// Lines holding a TOML syntax error, and the lines under a broken table header. The
    /// parser's recovery fills in a guess there, and an error about that guess would only
    /// repeat the syntax error, less clearly.
    syntax_lines: BTreeSet<usize>,
}

impl<'s> Diagnostics<'s> {
    pub fn new(src: &'s str, file: &Path) -> Self {
        Diagnostics {
            map: SourceMap::new(src),
            file: file.display().to_string(),
            errors: Vec::new(),
            syntax_lines: BTreeSet::new(),
        }
    }

    pub fn map(&self) -> &SourceMap<'s> {
        &self.map
    }

    pub fn line_of(&self, span: &Range<usize>) -> usize {
        self.map.locate(span).line
    }

    fn push(&mut self, span: &Range<usize>, message: String, hint: Option<String>) {
        let at = self.map.locate(span);
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line: at.line,
            column: at.column,
            message,
            hint,
            source_line: at.text,
            width: at.width,
        });
    }

    /// A TOML syntax error, as the parser words it.
    pub fn syntax(&mut self, span: Option<Range<usize>>, message: &str) {
        let span = span.unwrap_or(0..0);
        let at = self.map.locate(&span);
        self.syntax_lines.insert(at.line);
        if at.text.trim_start().starts_with('[') {
            // A broken table header leaves the keys under it in whatever table the parser
            // guessed, so errors about them are noise until the header is fixed.
            let end = self.map.next_header_line(at.line);
            self.syntax_lines.extend(at.line..end);
        }
        let hint = match message {
            "duplicate key" => Some("each key may be given once per table".to_owned()),
            _ => None,
        };
        self.push(&span, message.to_owned(), hint);
    }

    /// An error about a value or key that is really in the file.
    pub fn error(&mut self, span: &Range<usize>, message: impl Into<String>, hint: Option<String>) {
        if !self.syntax_lines.contains(&self.line_of(span)) {
            self.push(span, message.into(), hint);
        }
    }

    /// Like `error`, but the value at `span` is masked in the quoted line: it may hold a secret.
    pub fn error_masked(
        &mut self,
        span: &Range<usize>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        let before = self.errors.len();
        self.error(span, message, hint);
        if let Some(error) = self.errors.get_mut(before) {
            const MASK: &str = "<redacted>";
            let start = error.column - 1;
            let masked: String = error
                .source_line
                .chars()
                .take(start)
                .chain(MASK.chars())
                .chain(error.source_line.chars().skip(start + error.width))
                .collect();
            error.source_line = masked;
            error.width = MASK.len();
        }
    }

    /// An error about something absent or shaped wrongly (a missing key, a table where an array
    /// of tables belongs). After a syntax error the parser may have dropped or reshaped part of
    /// the file, so these are left out until the syntax is fixed.
    pub fn structural(
        &mut self,
        span: &Range<usize>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        if self.syntax_lines.is_empty() {
            self.push(span, message.into(), hint);
        }
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// The errors in file order; errors at the same place keep the order they were found in.
    pub fn finish(mut self) -> Vec<ConfigError> {
        self.errors.sort_by_key(|e| (e.line, e.column));
        self.errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_one_based_lines_and_character_columns() {
        let map = SourceMap::new("a = 1\nname = \"é\" x\n\nlast");
        assert_eq!(
            map.locate(&(0..1)),
            Location {
                line: 1,
                column: 1,
                text: "a = 1".into(),
                width: 1
            }
        );
        // "é" is two bytes: the `x` after it is at byte 18 but character column 12.
        let x = map.locate(&(18..19));
        assert_eq!(
            (x.line, x.column, x.text.as_str()),
            (2, 12, "name = \"é\" x")
        );
        let empty = map.locate(&(20..20));
        assert_eq!((empty.line, empty.column, empty.text.as_str()), (3, 1, ""));
        let end = map.locate(&(25..25));
        assert_eq!((end.line, end.column), (4, 5));
    }

    #[test]
    fn a_span_is_underlined_only_up_to_the_end_of_its_line() {
        let map = SourceMap::new("key = [1,\n 2]\r\n");
        let at = map.locate(&(6..14));
        assert_eq!((at.column, at.width), (7, 3));
        let crlf = map.locate(&(10..14));
        assert_eq!((crlf.line, crlf.text.as_str(), crlf.width), (2, " 2]", 3));
    }

    #[test]
    fn offsets_inside_a_character_or_past_the_end_do_not_panic() {
        let map = SourceMap::new("é");
        assert_eq!(map.locate(&(1..2)).column, 1);
        assert_eq!(map.locate(&(50..60)).column, 2);
        assert_eq!(SourceMap::new("").locate(&(0..0)).line, 1);
    }

    #[test]
    fn an_error_displays_like_rustc_with_the_line_a_caret_and_the_hint() {
        let error = ConfigError {
            file: "board.toml".into(),
            line: 12,
            column: 3,
            message: "unknown key `adress` in [[device.tag]]".into(),
            hint: Some("did you mean `address`?".into()),
            source_line: "\t adress = \"hr:100\"".into(),
            width: 6,
        };
        assert_eq!(
            error.to_string(),
            "board.toml:12:3: unknown key `adress` in [[device.tag]]\n   |\n12 | \t adress = \"hr:100\"\n   | \t ^^^^^^\n  hint: did you mean `address`?"
        );
    }

    #[test]
    fn all_errors_display_followed_by_their_count() {
        let one = ConfigError::whole_file(Path::new("b.toml"), "cannot read", None);
        assert_eq!(
            ConfigErrors(vec![one.clone()]).to_string(),
            "b.toml:1:1: cannot read\n\n1 error"
        );
        assert_eq!(
            ConfigErrors(vec![one.clone(), one]).to_string(),
            "b.toml:1:1: cannot read\n\nb.toml:1:1: cannot read\n\n2 errors"
        );
    }

    #[test]
    fn a_masked_value_is_not_quoted_in_the_error() {
        let src = "url = \"mqtt://u:pw@h\" # x";
        let mut cx = Diagnostics::new(src, Path::new("f.toml"));
        cx.error_masked(&(6..21), "no user info", None);
        let errors = cx.finish();
        assert_eq!(errors[0].source_line, "url = <redacted> # x");
        assert_eq!((errors[0].column, errors[0].width), (7, 10));
    }

    #[test]
    fn errors_under_a_broken_table_header_are_left_out_until_the_next_header() {
        let src = "[[device]\nname = 1\n\n[store]\nx = 1\n";
        let mut cx = Diagnostics::new(src, Path::new("f.toml"));
        cx.syntax(Some(9..9), "unclosed array table");
        cx.error(&(17..18), "expected a string", None);
        cx.error(&(28..29), "unknown key `x`", None);
        let lines: Vec<_> = cx.finish().iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![1, 5]);
    }

    #[test]
    fn errors_on_a_line_with_a_syntax_error_are_left_out() {
        let src = "a = \"x\nb = 2\n";
        let mut cx = Diagnostics::new(src, Path::new("f.toml"));
        cx.syntax(Some(6..6), "invalid basic string");
        cx.error(&(4..6), "expected an integer, found a string", None);
        cx.error(&(11..12), "`b` must be 1", None);
        cx.structural(&(0..0), "missing [gateway]", None);
        let errors = cx.finish();
        let lines: Vec<_> = errors.iter().map(|e| (e.line, e.column)).collect();
        assert_eq!(lines, vec![(1, 7), (2, 5)]);
    }
}
