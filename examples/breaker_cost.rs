//! What the resilience layer costs per request on the healthy path, in isolation: one
//! breaker admission plus one recorded success, and one fallback-chain lookup, timed over
//! many iterations. Run: `cargo run --release --example breaker_cost`.
#![expect(clippy::print_stdout, reason = "a measurement that prints its result")]

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use lowart::domain::breaker::{Breaker, BreakerConfig, CallResult};
use lowart::domain::fallbacks;

const ITERATIONS: u32 = 5_000_000;

fn main() {
    let mut breaker = Breaker::new(BreakerConfig::default());
    let started = Instant::now();
    for _ in 0..ITERATIONS {
        let now = Instant::now();
        if let Some(ticket) = breaker.try_acquire(now) {
            breaker.on_result(now, black_box(ticket), CallResult::Success);
        }
    }
    let breaker_ns = started.elapsed().as_nanos() as f64 / f64::from(ITERATIONS);

    let graph: HashMap<String, Vec<String>> =
        HashMap::from([("gpt-4o".to_string(), vec!["gpt-4o-mini".to_string()])]);
    let started = Instant::now();
    for _ in 0..ITERATIONS {
        black_box(fallbacks::chain(black_box(&graph), black_box("gpt-4o")));
    }
    let chain_ns = started.elapsed().as_nanos() as f64 / f64::from(ITERATIONS);

    println!("breaker admit + record success: {breaker_ns:.1} ns per request");
    println!("fallback chain lookup (1 fallback): {chain_ns:.1} ns per request");
}
