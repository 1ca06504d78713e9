//! The benches' table: Markdown, so a run pastes into the README as it is,
//! with figures formatted one way everywhere.

use std::fmt;
use std::time::Duration;

/// A header and rows of cells, printed as a Markdown table (first column
/// left-aligned, the rest right-aligned).
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(ToString::to_string).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line = |cells: &[String]| format!("| {} |", cells.join(" | "));
        writeln!(f, "{}", line(&self.header))?;
        let rule: Vec<String> = (0..self.header.len())
            .map(|i| if i == 0 { "---" } else { "---:" }.to_string())
            .collect();
        writeln!(f, "{}", line(&rule))?;
        for row in &self.rows {
            writeln!(f, "{}", line(row))?;
        }
        Ok(())
    }
}

/// Seconds from one second up, milliseconds below.
pub fn secs(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    }
}

pub fn micros(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// `a / b`, or `-` when `b` is zero.
pub fn ratio(a: Duration, b: Duration) -> String {
    ratio_of(a.as_secs_f64(), b.as_secs_f64())
}

/// `a / b` of any two figures, or `-` when `b` is zero.
pub fn ratio_of(a: f64, b: f64) -> String {
    if b == 0.0 {
        "-".into()
    } else {
        format!("{:.2}×", a / b)
    }
}

pub fn mib(kib: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let mib = kib as f64 / 1024.0;
    format!("{mib:.1} MiB")
}

#[cfg(test)]
mod tests {
    use super::{Table, mib, ratio, secs};
    use std::time::Duration;

    #[test]
    fn a_table_prints_as_markdown_with_figures_formatted_once() {
        let mut t = Table::new(&["size", "kube-proxy", "ratio"]);
        let (a, b) = (Duration::from_millis(1500), Duration::from_millis(500));
        t.row(vec!["1000×5".into(), secs(a), ratio(a, b)]);
        t.row(vec!["5000×5".into(), secs(b), ratio(a, Duration::ZERO)]);
        assert_eq!(
            t.to_string(),
            "| size | kube-proxy | ratio |\n| --- | ---: | ---: |\n\
             | 1000×5 | 1.50 s | 3.00× |\n| 5000×5 | 500.0 ms | - |\n"
        );
        assert_eq!(mib(1536), "1.5 MiB");
    }
}
