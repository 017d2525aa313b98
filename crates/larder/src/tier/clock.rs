//! The clock L1 judges freshness by.
//!
//! Every L1 hit reads the clock once, to tell fresh from stale from past its
//! grace. With `Instant::now()` (the vDSO's `CLOCK_MONOTONIC`, a `rdtsc` and
//! its scaling) that read was a tenth of the whole hit in a profile of
//! `benches/hit_path.rs`. On Linux the hit reads `CLOCK_MONOTONIC_COARSE`
//! instead: the same timeline as of the kernel's last tick, a plain load from
//! the vDSO's data page. It is behind the precise clock by at most one tick
//! (1–4 ms, by `CONFIG_HZ`) and never ahead of it, and deadlines are taken
//! from the precise clock, so an entry is never stale before its TTL and is
//! served as fresh at most one tick after it: far inside the error any TTL is
//! chosen with (larder's are seconds to hours; the jitter alone is more).
//!
//! Elsewhere both reads are the precise clock.

use std::time::Duration;

/// Nanoseconds on the monotonic clock, read precisely: for deadlines.
pub(crate) fn precise_ns() -> u64 {
    imp::read(imp::PRECISE)
}

/// Nanoseconds on the same clock, as of the last tick: for hits.
pub(crate) fn coarse_ns() -> u64 {
    imp::read(imp::COARSE)
}

/// The deadline `after` from now; `None` past the clock's range (never).
pub(crate) fn deadline(after: Duration) -> Option<u64> {
    u64::try_from(after.as_nanos())
        .ok()
        .and_then(|after| precise_ns().checked_add(after))
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod imp {
    pub(super) const PRECISE: libc::clockid_t = libc::CLOCK_MONOTONIC;
    pub(super) const COARSE: libc::clockid_t = libc::CLOCK_MONOTONIC_COARSE;

    pub(super) fn read(clock: libc::clockid_t) -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable `timespec` that outlives the
        // call; `clock_gettime` writes it and nothing else. Both clocks exist
        // on every Linux since 2.6.32, so it cannot fail with them.
        let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
        debug_assert_eq!(rc, 0, "clock_gettime({clock}) failed");
        (ts.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec as u64)
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod imp {
    use std::sync::OnceLock;
    use std::time::Instant;

    pub(super) const PRECISE: () = ();
    pub(super) const COARSE: () = ();

    pub(super) fn read(_: ()) -> u64 {
        static BASE: OnceLock<Instant> = OnceLock::new();
        let base = *BASE.get_or_init(Instant::now);
        u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_is_never_ahead_and_at_most_a_tick_behind() {
        for _ in 0..100_000 {
            let before = precise_ns();
            let coarse = coarse_ns();
            let after = precise_ns();
            assert!(coarse <= after, "coarse {coarse} ahead of precise {after}");
            // A tick is 10 ms at the slowest CONFIG_HZ (100); allow for the
            // thread being descheduled between the reads.
            assert!(
                before.saturating_sub(coarse) < 50_000_000,
                "coarse {coarse} more than 50 ms behind precise {before}"
            );
        }
    }

    #[test]
    fn a_deadline_is_after_now_and_none_past_the_range() {
        let now = precise_ns();
        let d = deadline(Duration::from_secs(1)).expect("in range");
        assert!(d >= now + 1_000_000_000);
        assert_eq!(deadline(Duration::MAX), None);
    }
}
