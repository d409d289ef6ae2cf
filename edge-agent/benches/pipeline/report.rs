//! How the benchmarks report: numbers with thousands separators, plain-text tables, and the
//! target directory their JSON goes to.

use std::path::{Path, PathBuf};

/// The target directory the benchmark was built in (`<target>/release/edge-agent`).
pub fn target_dir(bin: &Path) -> PathBuf {
    bin.parent()
        .and_then(Path::parent)
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
}

/// 1234567.8 → "1,234,568".
pub fn thousands(x: f64) -> String {
    let n = x.round().max(0.0) as u64;
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A plain-text table with columns as wide as their widest cell.
pub fn print_table<S: AsRef<str>>(headers: &[S], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.as_ref().chars().count()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("  {}", padded.join(" | ").trim_end());
    };
    line(headers.iter().map(AsRef::as_ref).collect());
    println!(
        "  {}",
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-+-")
    );
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}
