//! What the benchmark reads from the operating system: CPU time, resident memory and bytes
//! written of a process (from /proc), the machine's description, today's date, and whether a
//! binary carries a symbol table. Linux only, like the product's targets.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Clock ticks per second in /proc/<pid>/stat. USER_HZ is part of the Linux user-space ABI
/// and is 100 on every architecture the product targets.
const TICKS_PER_SECOND: f64 = 100.0;

/// User plus system CPU time of a process or thread, in clock ticks, from its `stat` file.
fn stat_ticks(stat: &str) -> Option<u64> {
    // The command name is in parentheses and may contain spaces: count fields after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of proc(5); `rest` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU seconds a process has used so far (all its threads).
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_ticks(&stat).map(|t| t as f64 / TICKS_PER_SECOND)
}

/// CPU seconds used so far by each live thread of a process, by thread id, with its name.
pub fn thread_cpu_seconds(pid: u32) -> HashMap<u32, (String, f64)> {
    let mut out = HashMap::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = task.path();
        let (Ok(stat), Ok(comm)) = (
            fs::read_to_string(dir.join("stat")),
            fs::read_to_string(dir.join("comm")),
        ) else {
            continue;
        };
        if let Some(ticks) = stat_ticks(&stat) {
            out.insert(
                tid,
                (comm.trim().to_owned(), ticks as f64 / TICKS_PER_SECOND),
            );
        }
    }
    out
}

/// CPU seconds used between two [`thread_cpu_seconds`] snapshots by the threads whose name
/// satisfies `pick` (threads that started in between count from zero).
pub fn thread_cpu_between(
    before: &HashMap<u32, (String, f64)>,
    after: &HashMap<u32, (String, f64)>,
    pick: impl Fn(&str) -> bool,
) -> f64 {
    after
        .iter()
        .filter(|(_, (name, _))| pick(name))
        .map(|(tid, (_, end))| end - before.get(tid).map_or(0.0, |(_, start)| *start))
        .sum()
}

/// CPU seconds the whole machine has spent busy (not idle, not waiting for I/O), summed over
/// its CPUs, from the first line of /proc/stat.
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((total - idle) as f64 / TICKS_PER_SECOND)
}

/// A `kB` line of /proc/<pid>/status (`VmRSS`, `VmHWM`), in bytes.
fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Resident memory of a process now, in bytes.
pub fn vm_rss(pid: u32) -> Option<u64> {
    status_kb(pid, "VmRSS")
}

/// Resident anonymous memory (heap, stacks) of a process now, in bytes; the rest of its RSS is
/// mapped files, mostly its own executable's pages.
pub fn rss_anon(pid: u32) -> Option<u64> {
    status_kb(pid, "RssAnon")
}

/// The most resident memory the process ever had, in bytes (the kernel's high-water mark).
pub fn vm_hwm(pid: u32) -> Option<u64> {
    status_kb(pid, "VmHWM")
}

/// Bytes the process caused to be sent to the storage layer (`write_bytes` of /proc/<pid>/io).
pub fn io_write_bytes(pid: u32) -> Option<u64> {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The processor model from /proc/cpuinfo.
pub fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// CPUs this process may run on (what `nproc` prints).
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The kernel release, for the record of where the figures were taken.
pub fn kernel() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Today's date (UTC) as `YYYY-MM-DD`.
pub fn today_utc() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Whether a 64-bit little-endian ELF file has a symbol table section (`SHT_SYMTAB`), that is,
/// was not stripped. `None` when the file is not such an ELF file.
pub fn elf_has_symtab(path: &Path) -> Option<bool> {
    const SHT_SYMTAB: u32 = 2;
    let bytes = fs::read(path).ok()?;
    if bytes.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |at: usize| -> Option<u16> {
        Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
    };
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
    };
    let shoff = usize::try_from(u64_at(0x28)?).ok()?;
    let shentsize = usize::from(u16_at(0x3A)?);
    let shnum = usize::from(u16_at(0x3C)?);
    let mut found = false;
    for i in 0..shnum {
        if u32_at(shoff + i * shentsize + 4)? == SHT_SYMTAB {
            found = true;
        }
    }
    Some(found)
}
