//! Measuring helpers shared by the plain (criterion-free) benches.

#![allow(dead_code)] // each bench uses its own subset

use std::time::Instant;

/// Latencies in µs of a sample of operations.
pub struct Sample(pub Vec<f64>);

impl Sample {
    /// Runs `f`, adding its wall time to the sample.
    pub fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        self.0.push(start.elapsed().as_secs_f64() * 1e6);
        out
    }

    /// Mean latency.
    pub fn mean(&self) -> f64 {
        self.0.iter().sum::<f64>() / self.0.len().max(1) as f64
    }

    /// The `q` quantile (0.5: median).
    pub fn quantile(&mut self, q: f64) -> f64 {
        self.0.sort_by(f64::total_cmp);
        let at = ((self.0.len() as f64 * q) as usize).min(self.0.len().saturating_sub(1));
        self.0.get(at).copied().unwrap_or(f64::NAN)
    }
}

/// The integer in environment variable `name` (`_` separators allowed),
/// or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| v.replace('_', ""))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
