//! First-packet TCP connect latency: fresh connections to each target in
//! turn (a Service address and the endpoint behind it), timed at
//! `connect(2)`, summarised as p50 and p99. `dataplane-bench` and `versus`
//! measure it the same way.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How long one connect may take before the measurement fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The median and the 99th percentile of a set of samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    pub p50: Duration,
    pub p99: Duration,
}

impl Latency {
    /// The nearest-rank quantiles of `samples` (zero when there are none).
    pub fn of(mut samples: Vec<Duration>) -> Latency {
        samples.sort();
        let at = |q: f64| {
            #[allow(
                clippy::cast_precision_loss,
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss
            )]
            let i = ((samples.len().saturating_sub(1) as f64) * q).round() as usize;
            samples.get(i).copied().unwrap_or_default()
        };
        Latency {
            p50: at(0.5),
            p99: at(0.99),
        }
    }
}

/// Connect `count` times to each target, the targets alternating so that
/// the machine's noise hits them alike; the latency per target, in order.
pub fn connects(targets: &[SocketAddr], count: usize) -> std::io::Result<Vec<Latency>> {
    let mut samples = vec![Vec::with_capacity(count); targets.len()];
    for _ in 0..count {
        for (i, t) in targets.iter().enumerate() {
            let start = Instant::now();
            let stream = TcpStream::connect_timeout(t, CONNECT_TIMEOUT)
                .map_err(|e| std::io::Error::new(e.kind(), format!("connect {t}: {e}")))?;
            samples[i].push(start.elapsed());
            reset_on_close(&stream);
        }
    }
    Ok(samples.into_iter().map(Latency::of).collect())
}

/// Close `stream` with a reset instead of TIME_WAIT, so thousands of
/// connects do not pile up in the client's port range.
pub fn reset_on_close(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::Latency;
    use std::time::Duration;

    #[test]
    fn quantiles_are_nearest_rank_of_the_sorted_samples() {
        let ms = Duration::from_millis;
        let l = Latency::of((1..=100).rev().map(ms).collect());
        assert_eq!((l.p50, l.p99), (ms(51), ms(99)));
        assert_eq!(Latency::of(vec![ms(7)]).p99, ms(7));
        assert_eq!(Latency::of(Vec::new()), Latency::default());
    }
}
