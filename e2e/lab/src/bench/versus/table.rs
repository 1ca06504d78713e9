//! `versus`' one table: a row per size, measure and mode, kube-proxy's
//! figure beside Switchyard's and their ratio. The eBPF mode, which
//! kube-proxy does not have, is compared with each of kube-proxy's modes of
//! the same size (the mode column says which). Connect latency and memory
//! are of the largest size measured, added last.

use std::time::Duration;

use switchyard_api::Mode;

use super::{Figures, Measured};
use crate::bench::connect::Latency;
use crate::bench::states::Size;
use crate::bench::table::{Table, mib, micros, ratio, ratio_of, secs};

/// One figure of a program: its cell, and the value the ratio divides.
type Cell = fn(&Figures) -> Option<(String, f64)>;

fn time(d: Option<Duration>) -> Option<(String, f64)> {
    d.map(|d| (secs(d), d.as_secs_f64()))
}

/// `VIP / direct (VIP÷direct)`; the ratio column divides the VIP figures.
fn connect(c: Option<(Latency, Latency)>, at: fn(&Latency) -> Duration) -> Option<(String, f64)> {
    c.map(|(vip, direct)| {
        let (v, d) = (at(&vip), at(&direct));
        let text = format!("{} / {} ({})", micros(v), micros(d), ratio(v, d));
        (text, v.as_secs_f64())
    })
}

#[allow(clippy::cast_precision_loss)]
fn kib(k: u64) -> Option<(String, f64)> {
    Some((mib(k), k as f64))
}

/// A row: what it measures, kube-proxy's cell and Switchyard's (the same
/// figure, but for the agent's mode switch, which kube-proxy's first sync
/// stands against).
type Row = (&'static str, Cell, Cell);

fn first(f: &Figures) -> Option<(String, f64)> {
    time(f.first)
}

fn partial(f: &Figures) -> Option<(String, f64)> {
    time(f.partial)
}

fn programming_p50(f: &Figures) -> Option<(String, f64)> {
    time(f.programming.map(|l| l.p50))
}

fn programming_p99(f: &Figures) -> Option<(String, f64)> {
    time(f.programming.map(|l| l.p99))
}

fn connect_p50(f: &Figures) -> Option<(String, f64)> {
    connect(f.connect, |l| l.p50)
}

fn connect_p99(f: &Figures) -> Option<(String, f64)> {
    connect(f.connect, |l| l.p99)
}

fn rss(f: &Figures) -> Option<(String, f64)> {
    kib(f.memory.rss_kib)
}

fn peak_rss(f: &Figures) -> Option<(String, f64)> {
    kib(f.memory.peak_kib)
}

/// The rows of every size.
const TIMES: [Row; 5] = [
    ("full sync (first)", first, first),
    ("full sync (agent: mode switch)", first, |f| time(f.switch)),
    ("endpoint change sync", partial, partial),
    ("programming latency p50", programming_p50, programming_p50),
    ("programming latency p99", programming_p99, programming_p99),
];

/// The rows of the largest size.
const LARGEST: [Row; 4] = [
    ("connect p50: VIP / direct", connect_p50, connect_p50),
    ("connect p99: VIP / direct", connect_p99, connect_p99),
    ("RSS (VmRSS)", rss, rss),
    ("peak RSS (VmHWM)", peak_rss, peak_rss),
];

/// What was measured so far, in order.
#[derive(Default)]
pub struct Results {
    measured: Vec<(Size, Mode, Measured)>,
}

impl Results {
    pub fn add(&mut self, size: Size, mode: Mode, measured: Measured) {
        self.measured.push((size, mode, measured));
    }

    /// Each Switchyard mode of `size` measured as `mode`, with the
    /// kube-proxy figures it is compared with and the mode column's text.
    fn pairs<'a>(
        &'a self,
        size: Size,
        mode: Mode,
        m: &'a Measured,
    ) -> Vec<(String, Option<&'a Figures>)> {
        if let Some(kp) = &m.kube_proxy {
            return vec![(mode.to_string(), Some(kp))];
        }
        let references: Vec<_> = self
            .measured
            .iter()
            .filter(|(s, _, r)| *s == size && r.kube_proxy.is_some())
            .map(|(_, kp_mode, r)| {
                (
                    format!("{mode} (kube-proxy {kp_mode})"),
                    r.kube_proxy.as_ref(),
                )
            })
            .collect();
        if references.is_empty() {
            vec![(mode.to_string(), None)]
        } else {
            references
        }
    }

    fn rows(&self, table: &mut Table, largest: bool, rows: &[Row]) {
        let last = self.measured.last().map(|(s, _, _)| *s);
        for (size, mode, m) in &self.measured {
            if largest && Some(*size) != last {
                continue;
            }
            for (what, kp_cell, sy_cell) in rows {
                for (label, kp) in self.pairs(*size, *mode, m) {
                    let (kp, sy) = (kp.and_then(kp_cell), sy_cell(&m.switchyard));
                    let r = kp
                        .as_ref()
                        .zip(sy.as_ref())
                        .map_or_else(|| "-".into(), |(k, s)| ratio_of(k.1, s.1));
                    let text = |c: Option<(String, f64)>| c.map_or_else(|| "-".into(), |c| c.0);
                    let row = [
                        size.to_string(),
                        (*what).into(),
                        label,
                        text(kp),
                        text(sy),
                        r,
                    ];
                    table.row(row.into());
                }
            }
        }
    }

    pub fn finish(&self) -> Table {
        let mut table = Table::new(&[
            "state",
            "measure",
            "mode",
            "kube-proxy",
            "Switchyard",
            "kube-proxy / Switchyard",
        ]);
        self.rows(&mut table, false, &TIMES);
        self.rows(&mut table, true, &LARGEST);
        table
    }
}

#[cfg(test)]
mod tests {
    use super::{Figures, Measured, Results};
    use crate::bench::states::Size;
    use std::time::Duration;
    use switchyard_api::Mode;

    #[test]
    fn ebpf_rows_name_the_kube_proxy_mode_they_are_compared_with() {
        let size: Size = "1000x5".parse().unwrap();
        let figures = |ms| Figures {
            first: Some(Duration::from_millis(ms)),
            ..Figures::default()
        };
        let mut results = Results::default();
        for (mode, kp) in [(Mode::Iptables, 400), (Mode::Nftables, 300)] {
            let m = Measured {
                kube_proxy: Some(figures(kp)),
                switchyard: figures(100),
            };
            results.add(size, mode, m);
        }
        let ebpf = Measured {
            kube_proxy: None,
            switchyard: figures(50),
        };
        results.add(size, Mode::Ebpf, ebpf);
        let text = results.finish().to_string();
        assert!(
            text.contains(
                "| 1000×5 | full sync (first) | iptables | 400.0 ms | 100.0 ms | 4.00× |"
            )
        );
        assert!(text.contains("| ebpf (kube-proxy iptables) | 400.0 ms | 50.0 ms | 8.00× |"));
        assert!(text.contains("| ebpf (kube-proxy nftables) | 300.0 ms | 50.0 ms | 6.00× |"));
        assert!(text.contains("| full sync (agent: mode switch) | iptables | 400.0 ms | - | - |"));
        assert!(text.contains("| endpoint change sync | ebpf (kube-proxy nftables) | - | - | - |"));
    }
}
