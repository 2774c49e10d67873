//! Admission to an endpoint: the scheduler every stage shares.
//!
//! - **One budget per endpoint**: at most `limit` attempts on the wire at once, whichever
//!   stage they come from.
//! - **Depth-first**: waiting attempts are admitted by priority (a row's later turn before a
//!   new row's first turn), then first come first served. A row's next turn goes out while
//!   its shared prefix is still warm in the server's cache, and rows finish instead of
//!   piling up half done, which keeps memory bounded.
//! - **Adaptive concurrency** (optional, AIMD): the limit grows by about one per round trip
//!   while latency holds, and halves on 429s and timeouts.
//! - **Rate limits** (optional): requests per minute and tokens per minute, as token buckets.

use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// Scheduling settings of an endpoint (`[endpoints.NAME]` in caiflow.toml).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// Adapt the concurrency limit (AIMD) between 1 and `max_concurrency`.
    #[serde(default)]
    pub adaptive: bool,
    #[serde(default)]
    pub requests_per_minute: Option<f64>,
    /// Prompt + completion tokens per minute, counted as responses arrive.
    #[serde(default)]
    pub tokens_per_minute: Option<f64>,
}

struct Waiter {
    priority: u32,
    seq: u64,
    tx: oneshot::Sender<Permit>,
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        self.priority == other.priority && self.seq == other.seq
    }
}
impl Eq for Waiter {}
impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiter {
    /// Higher priority first; among equals, the earlier arrival.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.priority
            .cmp(&other.priority)
            .then(other.seq.cmp(&self.seq))
    }
}

struct State {
    in_flight: usize,
    limit: f64,
    waiters: BinaryHeap<Waiter>,
    seq: u64,
    /// Lowest latency seen (the uncongested round trip), for AIMD.
    base_latency: Option<Duration>,
    last_cut: Option<Instant>,
    /// Token buckets: (available, last refill).
    requests: (f64, Instant),
    tokens: (f64, Instant),
}

pub struct Gate {
    /// Permits hold an Arc of their gate; the gate hands them out from a weak self-reference.
    me: Weak<Gate>,
    state: Mutex<State>,
    max: usize,
    config: GateConfig,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("max", &self.max)
            .field("config", &self.config)
            .finish()
    }
}

/// A slot on the wire; released on drop.
pub struct Permit {
    gate: Arc<Gate>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.release();
    }
}

impl Gate {
    pub fn new(max: usize, config: GateConfig) -> Arc<Gate> {
        let now = Instant::now();
        let start = if config.adaptive {
            (max as f64 / 4.0).max(1.0)
        } else {
            max as f64
        };
        Arc::new_cyclic(|me| Gate {
            me: me.clone(),
            state: Mutex::new(State {
                in_flight: 0,
                limit: start,
                waiters: BinaryHeap::new(),
                seq: 0,
                base_latency: None,
                last_cut: None,
                requests: (
                    config
                        .requests_per_minute
                        .map(|r| r / 60.0)
                        .unwrap_or(0.0)
                        .max(1.0),
                    now,
                ),
                tokens: (config.tokens_per_minute.unwrap_or(0.0), now),
            }),
            max: max.max(1),
            config,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current concurrency limit (changes only with `adaptive`).
    pub fn limit(&self) -> usize {
        self.lock().limit.floor() as usize
    }

    /// Wait for a slot; higher `priority` is admitted first.
    pub async fn acquire(self: &Arc<Self>, priority: u32) -> Permit {
        self.wait_for_rate().await;
        let rx = {
            let mut st = self.lock();
            let outranks = st.waiters.peek().is_none_or(|w| priority > w.priority);
            if (st.in_flight as f64) < st.limit.floor().max(1.0) && outranks {
                st.in_flight += 1;
                return Permit { gate: self.clone() };
            }
            let (tx, rx) = oneshot::channel();
            st.seq += 1;
            let seq = st.seq;
            st.waiters.push(Waiter { priority, seq, tx });
            rx
        };
        match rx.await {
            Ok(permit) => permit,
            // The gate never drops a waiter without granting it; be safe anyway.
            Err(_) => {
                self.lock().in_flight += 1;
                Permit { gate: self.clone() }
            }
        }
    }

    fn release(self: &Gate) {
        let mut st = self.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
        self.grant(&mut st);
    }

    /// Hand free slots to the best waiters.
    fn grant(&self, st: &mut State) {
        // Gate is always held in an Arc; permits carry a clone of it.
        let Some(me) = self.self_arc() else {
            return;
        };
        while (st.in_flight as f64) < st.limit.floor().max(1.0) {
            let Some(w) = st.waiters.pop() else { break };
            st.in_flight += 1;
            if let Err(permit) = w.tx.send(Permit { gate: me.clone() }) {
                // The waiter is gone: take the slot back without running Permit::drop
                // (which would lock the state we already hold).
                std::mem::forget(permit);
                st.in_flight -= 1;
            }
        }
    }

    /// Requests-per-minute and tokens-per-minute buckets.
    async fn wait_for_rate(&self) {
        loop {
            let wait = {
                let mut st = self.lock();
                let now = Instant::now();
                let mut wait = Duration::ZERO;
                if let Some(rpm) = self.config.requests_per_minute {
                    let rate = rpm / 60.0;
                    let (avail, last) = st.requests;
                    let avail =
                        (avail + now.duration_since(last).as_secs_f64() * rate).min(rate.max(1.0));
                    if avail >= 1.0 {
                        st.requests = (avail - 1.0, now);
                    } else {
                        st.requests = (avail, now);
                        wait = wait.max(Duration::from_secs_f64((1.0 - avail) / rate));
                    }
                }
                if let Some(tpm) = self.config.tokens_per_minute {
                    let rate = tpm / 60.0;
                    let (avail, last) = st.tokens;
                    let avail = (avail + now.duration_since(last).as_secs_f64() * rate).min(tpm);
                    st.tokens = (avail, now);
                    if avail <= 0.0 {
                        wait = wait.max(Duration::from_secs_f64((-avail + 1.0) / rate));
                    }
                }
                wait
            };
            if wait.is_zero() {
                return;
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Report a finished attempt: its latency, whether the server pushed back (429 or a
    /// timeout), and the tokens it used.
    pub fn on_done(&self, latency: Duration, overloaded: bool, tokens: u64) {
        let mut st = self.lock();
        if self.config.tokens_per_minute.is_some() {
            st.tokens.0 -= tokens as f64;
        }
        if !self.config.adaptive {
            return;
        }
        if overloaded {
            let recently = st.last_cut.is_some_and(|t| {
                t.elapsed()
                    < st.base_latency
                        .unwrap_or(Duration::from_millis(100))
                        .max(Duration::from_millis(100))
            });
            if !recently {
                st.limit = (st.limit / 2.0).max(1.0);
                st.last_cut = Some(Instant::now());
            }
            return;
        }
        let base = *st.base_latency.get_or_insert(latency);
        if latency < base {
            st.base_latency = Some(latency);
        }
        // Additive increase of about one slot per round trip, while latency holds.
        if latency <= base.mul_f64(2.0) + Duration::from_millis(5) {
            st.limit = (st.limit + 1.0 / st.limit.max(1.0)).min(self.max as f64);
        }
        self.grant(&mut st);
    }

    fn self_arc(&self) -> Option<Arc<Gate>> {
        self.me.upgrade()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn higher_priority_waiters_go_first() {
        let gate = Gate::new(1, GateConfig::default());
        let held = gate.acquire(0).await;
        let order = Arc::new(Mutex::new(vec![]));
        let mut tasks = vec![];
        for (i, prio) in [(0, 0u32), (1, 2), (2, 1), (3, 2)] {
            let (gate, order) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _p = gate.acquire(prio).await;
                order.lock().unwrap().push(i);
            }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![1, 3, 2, 0]);
    }

    #[tokio::test]
    async fn adaptive_limit_grows_and_halves() {
        let gate = Gate::new(
            16,
            GateConfig {
                adaptive: true,
                ..Default::default()
            },
        );
        assert_eq!(gate.limit(), 4);
        for _ in 0..200 {
            gate.on_done(Duration::from_millis(10), false, 0);
        }
        assert_eq!(gate.limit(), 16);
        gate.on_done(Duration::from_millis(10), true, 0);
        assert_eq!(gate.limit(), 8);
    }

    #[tokio::test]
    async fn requests_per_minute_are_spaced() {
        let gate = Gate::new(
            8,
            GateConfig {
                requests_per_minute: Some(600.0),
                ..Default::default()
            },
        );
        let started = Instant::now();
        for _ in 0..13 {
            let _p = gate.acquire(0).await;
        }
        // 10 per second with a one-second burst: ten go at once, the next three wait ~0.1 s each.
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "{:?}",
            started.elapsed()
        );
    }
}
