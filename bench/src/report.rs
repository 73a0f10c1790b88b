//! The figures of one bench run, as a table beside the targets and as JSON.

use std::fmt::Write;

use serde_json::json;

use crate::Settings;
use crate::load::Run;
use crate::sse::{Sse, pct};

pub struct Results {
    pub settings: serde_json::Value,
    pub header: String,
    pub rate_runs: Vec<(u32, Run, Run)>,
    /// The bare proxy's runs at the same rates (`floor.rs`).
    pub floor_runs: Vec<(u32, Run)>,
    pub sat_direct: Run,
    pub sat_gateway: Run,
    pub cpu_ms_per_req: f64,
    pub sse_direct: Sse,
    pub sse_gateway: Sse,
    pub peak_rss_mib: f64,
    pub first_start_s: f64,
    pub cold_starts_s: Vec<f64>,
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

/// The targets (issue 10: a hot path that beats every peer with all the accounting on).
pub mod target {
    /// Overhead over the direct call at each fixed rate, p50 and p99 (ms).
    pub const P50_OVERHEAD_MS: f64 = 0.1;
    pub const P99_OVERHEAD_MS: f64 = 0.5;
    /// Saturation through the gateway, as a share of the direct call's in the same run.
    pub const SATURATION_SHARE: f64 = 0.40;
    pub const CPU_MS_PER_REQUEST: f64 = 0.10;
    /// The first content chunk of a stream, after the direct call's (p50, ms).
    pub const SSE_FIRST_CHUNK_DELAY_MS: f64 = 0.3;
    pub const PEAK_RSS_MIB: f64 = 32.0;
    pub const COLD_START_S: f64 = 0.1;
}

impl Results {
    pub fn new(s: &Settings) -> Self {
        let pin = if s.pinned {
            "gateway pinned to CPU 0, mock + load on the other CPUs"
        } else {
            "unpinned"
        };
        Self {
            settings: json!({"seconds": s.secs, "warmup_seconds": s.warmup,
                "sse_requests": s.sse_n, "cold_starts": s.cold_n,
                "rate_connections": s.rate_conns, "saturation_connections": s.sat_conns,
                "pinned": s.pinned, "loadgen": s.loadgen}),
            header: format!(
                "Lowart overhead benchmark: {} s per run, {pin}; load: {}",
                s.secs, s.loadgen
            ),
            rate_runs: Vec::new(),
            floor_runs: Vec::new(),
            sat_direct: Run::default(),
            sat_gateway: Run::default(),
            cpu_ms_per_req: f64::NAN,
            sse_direct: Sse::default(),
            sse_gateway: Sse::default(),
            peak_rss_mib: f64::NAN,
            first_start_s: f64::NAN,
            cold_starts_s: Vec::new(),
        }
    }

    fn cold_median(&self) -> f64 {
        pct(&mut self.cold_starts_s.clone(), 0.5)
    }

    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "\n{}\n", self.header);
        let _ = writeln!(
            t,
            "{:<34} {:>10} {:>10} {:>18}   {:<26}",
            "metric", "direct", "gateway", "overhead", "target"
        );
        let _ = writeln!(t, "{}", "-".repeat(110));
        let mut row = |label: &str, d: f64, g: f64, goal: &str, ok: Option<bool>| {
            let over = if d.is_nan() {
                String::new()
            } else {
                format!("{:+.3} ({:.2}x)", g - d, g / d)
            };
            let d = if d.is_nan() {
                "-".to_owned()
            } else {
                format!("{d:.3}")
            };
            let _ = writeln!(
                t,
                "{label:<34} {d:>10} {g:>10.3} {over:>18}   {goal:<26} {}",
                ok.map_or("", verdict)
            );
        };
        for (rate, d, g) in &self.rate_runs {
            row(
                &format!("latency @{rate}/s p50 (ms)"),
                d.p50,
                g.p50,
                &format!("overhead <= {:.3} ms", target::P50_OVERHEAD_MS),
                Some(g.p50 - d.p50 <= target::P50_OVERHEAD_MS),
            );
            row(
                &format!("latency @{rate}/s p90 (ms)"),
                d.p90,
                g.p90,
                "",
                None,
            );
            row(
                &format!("latency @{rate}/s p99 (ms)"),
                d.p99,
                g.p99,
                &format!("overhead <= {:.3} ms", target::P99_OVERHEAD_MS),
                Some(g.p99 - d.p99 <= target::P99_OVERHEAD_MS),
            );
            row(
                &format!("  achieved @{rate}/s (req/s)"),
                d.rps,
                g.rps,
                "",
                None,
            );
        }
        for (rate, f) in &self.floor_runs {
            let Some((_, d, _)) = self.rate_runs.iter().find(|(r, _, _)| r == rate) else {
                continue;
            };
            row(
                &format!("floor: bare proxy @{rate}/s p50"),
                d.p50,
                f.p50,
                "(no target: the hop itself)",
                None,
            );
            row(
                &format!("floor: bare proxy @{rate}/s p99"),
                d.p99,
                f.p99,
                "",
                None,
            );
        }
        let (sd, sg) = (&self.sat_direct, &self.sat_gateway);
        row(
            "throughput, 64 conns (req/s)",
            sd.rps,
            sg.rps,
            &format!(
                "gateway >= {:.0} % of direct",
                target::SATURATION_SHARE * 100.0
            ),
            Some(sg.rps >= target::SATURATION_SHARE * sd.rps),
        );
        row(
            "gateway CPU-s / 1000 req",
            f64::NAN,
            self.cpu_ms_per_req,
            &format!("<= {:.2} (CPU-ms/req)", target::CPU_MS_PER_REQUEST),
            Some(self.cpu_ms_per_req <= target::CPU_MS_PER_REQUEST),
        );
        let (ed, eg) = (&self.sse_direct, &self.sse_gateway);
        row(
            "SSE first content chunk p50 (ms)",
            ed.first_p50,
            eg.first_p50,
            &format!(
                "overhead <= {:.1} ms, all [DONE]",
                target::SSE_FIRST_CHUNK_DELAY_MS
            ),
            Some(
                eg.first_p50 - ed.first_p50 <= target::SSE_FIRST_CHUNK_DELAY_MS
                    && eg.bad == 0
                    && eg.streams > 0,
            ),
        );
        row(
            "SSE first content chunk p99 (ms)",
            ed.first_p99,
            eg.first_p99,
            "",
            None,
        );
        row(
            "SSE whole stream p50 (ms)",
            ed.total_p50,
            eg.total_p50,
            "",
            None,
        );
        row(
            "SSE whole stream p99 (ms)",
            ed.total_p99,
            eg.total_p99,
            "",
            None,
        );
        row(
            "peak RSS, VmHWM (MiB)",
            f64::NAN,
            self.peak_rss_mib,
            &format!("<= {:.0} MiB", target::PEAK_RSS_MIB),
            Some(self.peak_rss_mib <= target::PEAK_RSS_MIB),
        );
        let cold = self.cold_median();
        row(
            &format!("cold start, median of {} (s)", self.cold_starts_s.len()),
            f64::NAN,
            cold,
            &format!("<= {:.1} s", target::COLD_START_S),
            Some(cold <= target::COLD_START_S),
        );
        row(
            "first start, fresh DB (s)",
            f64::NAN,
            self.first_start_s,
            "",
            None,
        );
        let failed: u64 = self
            .rate_runs
            .iter()
            .map(|(_, d, g)| d.failed + g.failed)
            .sum::<u64>()
            + sd.failed
            + sg.failed;
        let _ = writeln!(t, "{}", "-".repeat(110));
        let _ = writeln!(
            t,
            "failed requests: {failed}; bad SSE streams (no first chunk or no [DONE]): direct {}/{}, gateway {}/{}",
            ed.bad, ed.streams, eg.bad, eg.streams
        );
        t
    }

    pub fn to_json(&self) -> serde_json::Value {
        let rates: Vec<_> = self
            .rate_runs
            .iter()
            .map(|(rate, d, g)| {
                json!({"rate": rate, "direct": d.to_json(), "gateway": g.to_json(),
                "overhead_p50_ms": g.p50 - d.p50, "overhead_p90_ms": g.p90 - d.p90,
                "overhead_p99_ms": g.p99 - d.p99})
            })
            .collect();
        let floor: Vec<_> = self
            .floor_runs
            .iter()
            .map(|(rate, f)| json!({"rate": rate, "bare_proxy": f.to_json()}))
            .collect();
        json!({
            "settings": self.settings,
            "fixed_rate": rates,
            "floor": floor,
            "saturation": {"direct": self.sat_direct.to_json(), "gateway": self.sat_gateway.to_json()},
            "gateway_cpu_ms_per_request": self.cpu_ms_per_req,
            "sse": {"direct": self.sse_direct.to_json(), "gateway": self.sse_gateway.to_json()},
            "peak_rss_mib": self.peak_rss_mib,
            "first_start_s": self.first_start_s,
            "cold_start_s": {"median": self.cold_median(), "all": self.cold_starts_s},
            "targets": {"p50_overhead_ms": target::P50_OVERHEAD_MS,
                "p99_overhead_ms": target::P99_OVERHEAD_MS,
                "saturation_share_of_direct": target::SATURATION_SHARE,
                "cpu_ms_per_request": target::CPU_MS_PER_REQUEST,
                "sse_first_chunk_delay_p50_ms": target::SSE_FIRST_CHUNK_DELAY_MS,
                "peak_rss_mib": target::PEAK_RSS_MIB, "cold_start_s": target::COLD_START_S},
        })
    }
}
