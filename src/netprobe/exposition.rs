//! The probe's latest results in the Prometheus text format, served over HTTP at `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use super::{ERRORS_METRIC, EXPECTED_METRIC, RTT_METRIC, THROUGHPUT_METRIC};

#[derive(Debug, Clone, Default)]
pub struct PairResult {
    pub bits_per_second: Option<f64>,
    pub rtt_seconds: Option<f64>,
    pub errors: u64,
}

/// Results by target node, for one source node.
#[derive(Debug, Clone, Default)]
pub struct Results {
    pub source: String,
    pub expected_bits_per_second: f64,
    pub pairs: BTreeMap<String, PairResult>,
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Results {
    pub fn text(&self) -> String {
        let mut o = String::new();
        let src = esc(&self.source);
        let mut family =
            |name: &str, help: &str, kind: &str, f: &dyn Fn(&PairResult) -> Option<f64>| {
                let _ = writeln!(o, "# HELP {name} {help}");
                let _ = writeln!(o, "# TYPE {name} {kind}");
                for (t, r) in &self.pairs {
                    if let Some(v) = f(r) {
                        let _ = writeln!(o, "{name}{{source=\"{src}\",target=\"{}\"}} {v}", esc(t));
                    }
                }
            };
        family(
            THROUGHPUT_METRIC,
            "TCP throughput of the last measurement to the target.",
            "gauge",
            &|r| r.bits_per_second,
        );
        family(
            RTT_METRIC,
            "Median TCP round-trip time of the last measurement.",
            "gauge",
            &|r| r.rtt_seconds,
        );
        let expected = self.expected_bits_per_second;
        family(
            EXPECTED_METRIC,
            "The speed the link is expected to carry.",
            "gauge",
            &|r| r.bits_per_second.map(|_| expected),
        );
        family(
            ERRORS_METRIC,
            "Failed measurements to the target.",
            "counter",
            &|r| Some(r.errors as f64),
        );
        o
    }
}

/// Serve `results` at every path (Prometheus asks for `/metrics`) until the listener fails.
pub fn serve(listener: TcpListener, results: Arc<Mutex<Results>>) -> std::io::Result<()> {
    for conn in listener.incoming() {
        let Ok(mut c) = conn else { continue };
        let mut req = [0u8; 1024];
        let _ = c.read(&mut req);
        let body = results.lock().map(|r| r.text()).unwrap_or_default();
        let _ = write!(
            c,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
    Ok(())
}
