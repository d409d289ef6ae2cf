//! What command safety needs around the pure rules of `mes_bridge::gate`: the count of every
//! command by northbound, kind and outcome (with the refusal reason) and the latency of PLC
//! writes, both for `/metrics`; and a log that stays readable under a command flood (a budget
//! of lines per minute, then one summary line per minute of what was not logged).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use edge_driver::LatencyHistogram;
use mes_bridge::gate::Refusal;

/// What became of one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Every write was carried out.
    Written,
    /// Answered again from the answer of an earlier identical request; nothing written.
    Duplicate,
    /// Refused by command safety before its content was looked at.
    Refused(&'static str),
    /// Invalid (envelope, unknown target, wrong value): nothing written.
    Rejected,
    /// Valid, but the PLC was offline, did not answer or refused.
    Failed,
}

impl Outcome {
    pub fn refused(r: &Refusal) -> Outcome {
        Outcome::Refused(r.reason())
    }

    /// The outcome's name, as the `outcome` label and the console say it.
    pub fn name(self) -> &'static str {
        self.labels().0
    }

    fn labels(self) -> (&'static str, &'static str) {
        match self {
            Outcome::Written => ("written", ""),
            Outcome::Duplicate => ("duplicate", ""),
            Outcome::Refused(reason) => ("refused", reason),
            Outcome::Rejected => ("rejected", ""),
            Outcome::Failed => ("failed", ""),
        }
    }
}

/// Commands counted by northbound, kind (`set`, `dispatch`, `other`, `dcmd`, `ncmd`) and
/// outcome; PLC write latency of the commands carried out.
#[derive(Debug, Default)]
pub struct CommandStats {
    counts: Mutex<BTreeMap<(String, &'static str, Outcome), u64>>,
    write_latency: LatencyHistogram,
    /// The latest commands, newest last, for the console's command log.
    recent: Mutex<VecDeque<CommandEntry>>,
}

/// Commands the console's log keeps.
pub const RECENT_COMMANDS: usize = 200;
/// The most of a command's payload or answer the log keeps.
const ENTRY_TEXT: usize = 512;

/// One command as the console's log shows it: who sent what, and the answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CommandEntry {
    pub at_ms: u64,
    pub northbound: String,
    /// Who sent it, as far as MQTT tells: the command topic (a client id is not carried by
    /// MQTT 3.1.1 messages) and the request id.
    pub source: String,
    pub kind: String,
    pub target: String,
    pub value: String,
    /// `written`, `duplicate`, `refused`, `rejected` or `failed`.
    pub outcome: String,
    pub answer: String,
}

/// `text` cut to at most [`ENTRY_TEXT`] bytes, on a character boundary.
pub fn clip(text: &str) -> String {
    let mut end = text.len().min(ENTRY_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default().to_owned()
}

impl CommandStats {
    pub fn count(&self, northbound: &str, kind: &'static str, outcome: Outcome) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *counts
            .entry((northbound.to_owned(), kind, outcome))
            .or_default() += 1;
    }

    /// Adds one command to the log, forgetting the oldest beyond [`RECENT_COMMANDS`].
    pub fn note(&self, entry: CommandEntry) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() >= RECENT_COMMANDS {
            recent.pop_front();
        }
        recent.push_back(entry);
    }

    /// The logged commands, newest first.
    pub fn recent(&self) -> Vec<CommandEntry> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().rev().cloned().collect()
    }

    /// How long the writes of one command took, first write to last answer.
    pub fn observe_write(&self, took: Duration) {
        self.write_latency
            .observe(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }

    /// How many commands of `northbound` had `outcome`, over every kind.
    pub fn total(&self, northbound: &str, outcome: Outcome) -> u64 {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts
            .iter()
            .filter(|((nb, _, o), _)| nb == northbound && *o == outcome)
            .map(|(_, n)| n)
            .sum()
    }

    /// The Prometheus text of the command metrics.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counts = self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let name = "edge_agent_commands_total";
        let _ = writeln!(out, "# HELP {name} Commands received, by northbound, kind and outcome (written, duplicate, refused with its reason, rejected, failed).");
        let _ = writeln!(out, "# TYPE {name} counter");
        for ((nb, kind, outcome), n) in &counts {
            let (outcome, reason) = outcome.labels();
            let _ = writeln!(
                out,
                "{name}{{northbound=\"{}\",kind=\"{kind}\",outcome=\"{outcome}\",reason=\"{reason}\"}} {n}",
                crate::admin::escape_label(nb)
            );
        }
        let h = "edge_agent_command_write_seconds";
        let snap = self.write_latency.snapshot();
        let _ = writeln!(
            out,
            "# HELP {h} Time from a command's first PLC write to the answer of its last."
        );
        let _ = writeln!(out, "# TYPE {h} histogram");
        for (bound, n) in &snap.cumulative {
            let _ = writeln!(out, "{h}_bucket{{le=\"{}\"}} {n}", *bound as f64 / 1e6);
        }
        let _ = writeln!(out, "{h}_bucket{{le=\"+Inf\"}} {}", snap.count);
        let _ = writeln!(out, "{h}_sum {}", snap.sum_us as f64 / 1e6);
        let _ = writeln!(out, "{h}_count {}", snap.count);
        out
    }
}

/// Lines logged per minute before the rest is summarised.
pub const LOG_BUDGET: u32 = 20;
const LOG_WINDOW: Duration = Duration::from_secs(60);

/// A per-minute budget of log lines: within it every command is logged; beyond it lines are
/// counted, and the count is logged once when the minute is over.
#[derive(Debug)]
pub struct LogLimiter {
    budget: u32,
    window: Duration,
    started: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter::new(LOG_BUDGET, LOG_WINDOW)
    }
}

impl LogLimiter {
    pub fn new(budget: u32, window: Duration) -> LogLimiter {
        LogLimiter {
            budget,
            window,
            started: None,
            logged: 0,
            suppressed: 0,
        }
    }

    /// Whether a line may be logged at `now`; and, when a window has just ended with lines
    /// held back, how many, to be said in a summary first.
    pub fn admit(&mut self, now: Instant) -> (bool, Option<u64>) {
        let mut summary = None;
        match self.started {
            Some(s) if now.duration_since(s) < self.window => {}
            _ => {
                if self.suppressed > 0 {
                    summary = Some(self.suppressed);
                }
                self.started = Some(now);
                self.logged = 0;
                self.suppressed = 0;
            }
        }
        if self.logged < self.budget {
            self.logged += 1;
            (true, summary)
        } else {
            self.suppressed += 1;
            (false, summary)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_logged_up_to_its_budget_and_then_summarised_once_per_window() {
        let mut l = LogLimiter::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        let seen: Vec<bool> = (0..10).map(|_| l.admit(t0).0).collect();
        assert_eq!(
            seen,
            [true, true, true, false, false, false, false, false, false, false]
        );
        // The next window starts with a summary of the seven held back.
        assert_eq!(l.admit(t0 + Duration::from_secs(61)), (true, Some(7)));
        assert_eq!(l.admit(t0 + Duration::from_secs(62)), (true, None));
    }

    #[test]
    fn commands_are_counted_by_outcome_and_refusal_reason_in_the_metrics_text() {
        let s = CommandStats::default();
        s.count("mes", "set", Outcome::Written);
        s.count("mes", "set", Outcome::Refused("retained"));
        s.count("mes", "set", Outcome::Refused("retained"));
        s.count("scada", "dcmd", Outcome::Refused("expired"));
        s.observe_write(Duration::from_millis(3));
        let text = s.render();
        assert!(text.contains(
            "edge_agent_commands_total{northbound=\"mes\",kind=\"set\",outcome=\"refused\",reason=\"retained\"} 2"
        ), "{text}");
        assert!(text.contains(
            "edge_agent_commands_total{northbound=\"scada\",kind=\"dcmd\",outcome=\"refused\",reason=\"expired\"} 1"
        ), "{text}");
        assert!(
            text.contains("edge_agent_command_write_seconds_count 1"),
            "{text}"
        );
        assert_eq!(s.total("mes", Outcome::Refused("retained")), 2);
        assert_eq!(s.total("mes", Outcome::Written), 1);
    }
}
