//! `gradcam bench --profile` on the CPU: wall time per op, keyed like the GPU's per-kernel
//! table (`"<op>"`, or `"<op> RxCxD[xGg]"` for a convolution's GEMM shape per group), so the
//! same printer reads both. CPU ops run to completion on the calling thread (their rayon work
//! included), so no synchronisation is needed around them.
//!
//! One table per process: `CpuBackend` is `Copy`, and its copies are one backend.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

type Table = BTreeMap<String, (usize, Duration)>;

/// Checked before anything else, so an op pays one relaxed load when profiling is off.
static ON: AtomicBool = AtomicBool::new(false);
static TABLE: Mutex<Option<Table>> = Mutex::new(None);

/// Turns profiling on (keeping earlier times) or off (dropping them).
pub(super) fn set(on: bool) {
    let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    *t = on.then(|| t.take().unwrap_or_default());
    ON.store(on, Ordering::Relaxed);
}

/// (op, calls, total time), slowest first.
pub(super) fn times() -> Vec<(String, usize, Duration)> {
    crate::backend::slowest_first(TABLE.lock().unwrap_or_else(|e| e.into_inner()).as_ref())
}

/// Times the op until the returned guard drops; `None` (nothing to do) when profiling is off.
/// `tag` is formed only while profiling.
pub(super) fn span(op: &'static str, tag: impl FnOnce() -> Option<String>) -> Option<Span> {
    ON.load(Ordering::Relaxed).then(|| Span {
        key: match tag() {
            Some(t) => format!("{op} {t}"),
            None => op.to_string(),
        },
        start: Instant::now(),
    })
}

pub(super) struct Span {
    key: String,
    start: Instant,
}

impl Drop for Span {
    fn drop(&mut self) {
        // Ops run in a rayon task share the threads with the same op on other images (the
        // network's image-by-image layers): a thread's share of the wall time is counted.
        let d = match rayon::current_thread_index() {
            Some(_) => self.start.elapsed() / rayon::current_num_threads().max(1) as u32,
            None => self.start.elapsed(),
        };
        let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
        // Profiling turned off while the op ran: its time is dropped with the table.
        if let Some(t) = t.as_mut() {
            let e = t.entry(std::mem::take(&mut self.key)).or_default();
            e.0 += 1;
            e.1 += d;
        }
    }
}

/// A convolution's GEMM per group, as the GPU profile tags it: rows x cols x depth, then the
/// groups when more than one.
pub(super) fn gemm_tag(rows: usize, cols: usize, depth: usize, groups: usize) -> String {
    match groups {
        1 => format!("{rows}x{cols}x{depth}"),
        g => format!("{rows}x{cols}x{depth}x{g}g"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_count_while_on_only() {
        // The table is process-wide: other tests' ops may add rows, so only this op's is read.
        let calls = |op: &str| times().into_iter().find(|e| e.0 == op).map_or(0, |e| e.1);
        drop(span("profile_test_op", || None));
        set(true);
        for _ in 0..3 {
            let _s = span("profile_test_op", || None);
            std::thread::sleep(Duration::from_millis(1));
        }
        let t = times();
        let e = t.iter().find(|e| e.0 == "profile_test_op").expect("timed");
        assert_eq!(e.1, 3);
        assert!(e.2 >= Duration::from_millis(3), "{:?}", e.2);
        drop(span("profile_test_conv", || {
            Some(gemm_tag(64, 3136, 576, 1))
        }));
        assert_eq!(calls("profile_test_conv 64x3136x576"), 1);
        set(false);
        assert_eq!(calls("profile_test_op"), 0);
        drop(span("profile_test_op", || None));
        assert_eq!(calls("profile_test_op"), 0);
        assert_eq!(gemm_tag(8, 9, 10, 32), "8x9x10x32g");
    }
}
