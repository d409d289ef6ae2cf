//! How log lines look on stderr: tracing's text for a person; under systemd the same text with
//! each line's syslog priority in front (`<3>` error … `<7>` debug, the sd-daemon(3)
//! convention journald reads); or one JSON object per line for log shippers.

use std::fmt;
use std::io::IsTerminal;
use std::path::Path;

use edge_config::ConfigErrors;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// `--log-format` (or `EDGE_AGENT_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for a person (the default).
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and the event's
    /// fields.
    Json,
}

/// The environment variable that chooses the format when the flag is not given.
pub const FORMAT_ENV: &str = "EDGE_AGENT_LOG_FORMAT";

impl LogFormat {
    /// The flag if given, else `EDGE_AGENT_LOG_FORMAT`, else text. An unknown value is an
    /// error naming what is accepted.
    pub fn choose(flag: Option<LogFormat>, env: Option<&str>) -> Result<LogFormat, String> {
        if let Some(f) = flag {
            return Ok(f);
        }
        match env.map(str::trim) {
            None | Some("") => Ok(LogFormat::Text),
            Some(v) if v.eq_ignore_ascii_case("text") => Ok(LogFormat::Text),
            Some(v) if v.eq_ignore_ascii_case("json") => Ok(LogFormat::Json),
            Some(v) => Err(format!(
                "{FORMAT_ENV}={v:?} is not a log format; use \"text\" or \"json\""
            )),
        }
    }
}

/// The syslog priority of a level, as sd-daemon(3) prefixes it: `<3>` err, `<4>` warning,
/// `<6>` info, `<7>` debug (trace has no syslog level of its own).
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// True when stderr is the journal stream systemd set up for this process: `JOURNAL_STREAM`
/// (`device:inode`) names the very file stderr is, as sd-daemon advises checking, so a shell
/// or a redirect started from a service does not get prefixes it did not ask for.
pub fn stderr_is_journal(journal_stream: Option<&str>) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some((dev, ino)) = journal_stream.and_then(parse_journal_stream) else {
        return false;
    };
    std::fs::metadata(Path::new("/proc/self/fd/2")).is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// `JOURNAL_STREAM`'s `device:inode`, both decimal.
pub fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.trim().split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// How this process logs, decided once at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    pub format: LogFormat,
    /// Prefix each line with its priority (stderr is the journal).
    pub journal: bool,
}

impl Style {
    /// From the chosen format and this process's environment.
    pub fn detect(format: LogFormat) -> Style {
        let stream = std::env::var("JOURNAL_STREAM").ok();
        Style {
            format,
            journal: stderr_is_journal(stream.as_deref()),
        }
    }

    /// True when stderr is read by a program (journald, a shipper), not a person: messages
    /// printed for a person go through the log instead.
    pub fn structured(&self) -> bool {
        self.journal || self.format == LogFormat::Json
    }
}

/// Filter directives that keep the OPC UA stack to its errors. It logs every connection step
/// and retry; the agent logs what matters (once per episode, with what to do).
pub const OPCUA_QUIET: &str = "opcua_client=error,opcua_core=error,opcua_crypto=error,opcua_server=error,opcua_nodes=error,opcua_types=error";

/// Picks the format (`--log-format`, else `EDGE_AGENT_LOG_FORMAT`, else text), installs the
/// subscriber with [`init`] and returns the style. An unknown format logs as text with a
/// warning: logs in the wrong format are no reason to stop collecting data.
pub fn setup(flag: Option<LogFormat>, default_filter: &str) -> Style {
    let env_format = std::env::var(FORMAT_ENV).ok();
    let (format, bad_format) = match LogFormat::choose(flag, env_format.as_deref()) {
        Ok(f) => (f, None),
        Err(e) => (LogFormat::Text, Some(e)),
    };
    let style = Style::detect(format);
    init(style, default_filter);
    if let Some(e) = bad_format {
        tracing::warn!("{e}; logging as text");
    }
    style
}

/// Installs the global subscriber: `RUST_LOG` if set, else `default_filter`.
pub fn init(style: Style, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Colour only for a person at a terminal, never into journald or a log file.
    let ansi = !style.structured()
        && std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match (style.format, style.journal) {
        (LogFormat::Json, journal) => builder
            .event_format(JsonLines { journal })
            .finish()
            .with(QuietOpcuaKeys)
            .init(),
        // journald stamps each line itself.
        (LogFormat::Text, true) => builder
            .event_format(Prefixed(Format::default().without_time()))
            .finish()
            .with(QuietOpcuaKeys)
            .init(),
        (LogFormat::Text, false) => builder.finish().with(QuietOpcuaKeys).init(),
    }
}

/// Drops the OPC UA stack's errors about the gateway's own certificate and private key. The
/// stack reads them for every client and channel whatever the security policy, so a session
/// with security `None` (which needs neither) logged six errors. The agent makes its key
/// before any secured session and reports its own failures in words; these add nothing.
#[derive(Debug, Clone, Copy)]
pub struct QuietOpcuaKeys;

impl QuietOpcuaKeys {
    /// True for the stack's own-key complaints.
    pub fn is_key_noise(target: &str, message: &str) -> bool {
        target.starts_with("opcua_")
            && (message.contains("private key") || message.contains("own certificate"))
    }
}

impl<S: Subscriber> Layer<S> for QuietOpcuaKeys {
    fn event_enabled(&self, event: &Event<'_>, _cx: Context<'_, S>) -> bool {
        let target = event.metadata().target();
        if !target.starts_with("opcua_") {
            return true;
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        !Self::is_key_noise(target, &message.0)
    }
}

/// The `message` field of an event.
struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_owned();
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

/// Config errors of `run`: for a person the rustc-like listing; for a program one error event
/// per mistake, with its position as fields.
pub fn config_errors(style: Style, errors: &ConfigErrors) {
    if !style.structured() {
        eprintln!("{errors}");
        return;
    }
    for e in errors {
        tracing::error!(file = %e.file, line = e.line, column = e.column, hint = e.hint.as_deref(),
            "{}:{}:{}: {}", e.file, e.line, e.column, e.message);
    }
}

/// The text format with the priority in front.
struct Prefixed<T>(Format<Full, T>);

impl<S, N, T> FormatEvent<S, N> for Prefixed<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    Format<Full, T>: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// One JSON object per event, on one line.
struct JsonLines {
    journal: bool,
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut object = Map::new();
        object.insert("timestamp".into(), Value::String(timestamp));
        object.insert("level".into(), Value::String(meta.level().to_string()));
        object.insert("target".into(), Value::String(meta.target().to_owned()));
        event.record(&mut JsonFields(&mut object));
        if self.journal {
            write!(writer, "<{}>", priority(meta.level()))?;
        }
        let line = serde_json::to_string(&object).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

/// Event fields into a JSON object; numbers and booleans stay typed.
struct JsonFields<'a>(&'a mut Map<String, Value>);

impl Visit for JsonFields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let v = serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number);
        self.0.insert(field.name().into(), v);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_carry_the_sd_daemon_priorities() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
        assert_eq!(priority(&Level::TRACE), 7);
    }

    #[test]
    fn only_the_opcua_stacks_own_key_complaints_are_dropped() {
        for (target, message) in [
            ("opcua_crypto::certificate_store", "Failed to get cert and private key: a, b"),
            ("opcua_client::session::client", "Client is missing its application instance certificate and/or its private key. Encrypted endpoints will not function correctly."),
            ("opcua_core::comms::secure_channel", "Failed to read own certificate: x. Check paths, crypto won't work"),
            ("opcua_core::comms::secure_channel", "Failed to read own private key: x. Check paths, crypto won't work"),
        ] {
            assert!(QuietOpcuaKeys::is_key_noise(target, message), "{message}");
        }
        assert!(!QuietOpcuaKeys::is_key_noise(
            "opcua_client::session",
            "BadTimeout"
        ));
        assert!(!QuietOpcuaKeys::is_key_noise(
            "edge_agent::daemon",
            "cannot read the private key"
        ));
    }

    #[test]
    fn journal_stream_is_a_device_and_an_inode() {
        assert_eq!(parse_journal_stream("8:1234"), Some((8, 1234)));
        assert_eq!(parse_journal_stream(" 0:42\n"), Some((0, 42)));
        assert_eq!(parse_journal_stream("8"), None);
        assert_eq!(parse_journal_stream("a:1"), None);
        assert_eq!(parse_journal_stream(""), None);
    }

    #[test]
    fn a_journal_stream_that_is_not_stderr_is_not_the_journal() {
        assert!(!stderr_is_journal(None));
        assert!(!stderr_is_journal(Some("garbage")));
        // No file has inode 0.
        assert!(!stderr_is_journal(Some("0:0")));
    }

    #[test]
    fn the_flag_wins_over_the_environment_and_a_bad_value_is_named() {
        assert_eq!(
            LogFormat::choose(Some(LogFormat::Text), Some("json")),
            Ok(LogFormat::Text)
        );
        assert_eq!(LogFormat::choose(None, Some("JSON")), Ok(LogFormat::Json));
        assert_eq!(LogFormat::choose(None, None), Ok(LogFormat::Text));
        let e = LogFormat::choose(None, Some("yaml")).expect_err("unknown");
        assert!(e.contains("EDGE_AGENT_LOG_FORMAT=\"yaml\""), "{e}");
    }

    #[test]
    fn a_json_line_holds_the_message_and_typed_fields() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        for journal in [false, true] {
            let buf = Buf::default();
            let out = buf.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || out.clone())
                .event_format(JsonLines { journal })
                .finish();
            tracing::subscriber::with_default(subscriber, || {
                tracing::warn!(
                    northbound = "mes",
                    retries = 3u64,
                    "broker \"x\" unreachable"
                );
            });
            let text = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf-8");
            let line = text.strip_suffix('\n').expect("one line");
            let line = match journal {
                true => line.strip_prefix("<4>").expect("priority"),
                false => line,
            };
            let v: Value = serde_json::from_str(line).expect("json");
            assert_eq!(v["level"], "WARN");
            assert_eq!(v["message"], "broker \"x\" unreachable");
            assert_eq!(v["northbound"], "mes");
            assert_eq!(v["retries"], 3);
            assert!(
                v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
                "{v}"
            );
        }
    }
}
