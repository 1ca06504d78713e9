//! Prometheus' text format as kube-proxy and the node agent serve it: fetched
//! from inside the node's namespace (by the harness' one HTTP GET), read
//! series by series. One reader for the reference's waits and the benches'
//! figures.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::HarnessError;
use crate::netns::Netns;

/// The whole answer (status line, headers, body) to `GET path` of `addr`,
/// asked from inside `ns`.
pub fn http_get(ns: &Netns, addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    ns.run(move || -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(request.as_bytes())?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(text)
    })
    .map_err(std::io::Error::other)
    .and_then(|fetched| fetched)
}

/// `GET /metrics` from `what` at `addr`, connecting from inside `ns`.
pub fn fetch(ns: &Netns, addr: SocketAddr, what: &str) -> Result<String, HarnessError> {
    http_get(ns, addr, "/metrics").map_err(|e| HarnessError::Setup {
        what: format!("{what} /metrics"),
        message: e.to_string(),
    })
}

/// Every series of metric `name` in Prometheus' text format, by its labels.
pub fn series(text: &str, name: &str) -> BTreeMap<String, f64> {
    let mut found = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => r.split_once("} ").unwrap_or(("", "")),
            None => match rest.strip_prefix(' ') {
                Some(v) => ("", v),
                None => continue,
            },
        };
        if let Ok(v) = value.trim().parse::<f64>() {
            found.insert(labels.to_string(), v);
        }
    }
    found
}

/// A histogram's sum and count: the mean of what was observed between two
/// readings is exact, where its buckets only bound it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Histogram {
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    /// Histogram `name`'s series whose labels are exactly `labels` (`""`
    /// when it has none).
    pub fn read(text: &str, name: &str, labels: &str) -> Histogram {
        let value = |suffix: &str| {
            series(text, &format!("{name}{suffix}"))
                .get(labels)
                .copied()
                .unwrap_or(0.0)
        };
        // Counts are whole numbers; truncation is exact.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let count = value("_count") as u64;
        Histogram {
            sum: value("_sum"),
            count,
        }
    }

    /// The mean observation since `before`, if there was one.
    pub fn mean_since(&self, before: &Histogram) -> Option<Duration> {
        let n = self.count.checked_sub(before.count).filter(|&n| n > 0)?;
        #[allow(clippy::cast_precision_loss)]
        let mean = (self.sum - before.sum) / n as f64;
        Duration::try_from_secs_f64(mean.max(0.0)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::{Histogram, series};
    use std::time::Duration;

    #[test]
    fn series_are_keyed_by_labels_and_longer_names_ignored() {
        let text = "# HELP x y\nkubeproxy_a 2\nkubeproxy_a{f=\"1\"} 3\nkubeproxy_ab 7\n";
        let a = series(text, "kubeproxy_a");
        assert_eq!(a.len(), 2);
        assert_eq!(a.values().sum::<f64>(), 5.0);
        assert_eq!(a.get("f=\"1\""), Some(&3.0));
        assert!(series(text, "kubeproxy_b").is_empty());
    }

    #[test]
    fn histogram_mean_is_of_the_observations_between_readings_of_one_family() {
        let before = "h_sum{ip_family=\"IPv4\"} 1.5\nh_count{ip_family=\"IPv4\"} 1\n\
                      h_sum{ip_family=\"IPv6\"} 0.1\nh_count{ip_family=\"IPv6\"} 9\n";
        let after = "h_sum{ip_family=\"IPv4\"} 2.5\nh_count{ip_family=\"IPv4\"} 5\n";
        let v4 = "ip_family=\"IPv4\"";
        let (b, a) = (
            Histogram::read(before, "h", v4),
            Histogram::read(after, "h", v4),
        );
        assert_eq!(b, Histogram { sum: 1.5, count: 1 });
        assert_eq!(a.mean_since(&b), Some(Duration::from_millis(250)));
        assert_eq!(b.mean_since(&b), None);
        assert_eq!(Histogram::read(after, "h", "").count, 0);
    }
}
