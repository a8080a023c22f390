//! Clocks and process figures: the shared monotonic clock that stamps every
//! message (and paces open-loop schedules), our own CPU time, and a
//! broker's RSS and CPU from `/proc/PID`.

use serde::Serialize;

/// Nanoseconds on CLOCK_MONOTONIC. The clock is system-wide, so stamps taken
/// by the coordinator and read by worker processes are comparable.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Open-loop pacing: when the `k`-th of something started at `start_ns` is
/// due at `rate` per second, whatever happened to the ones before it.
pub fn due_ns(start_ns: u64, k: u64, rate: f64) -> u64 {
    start_ns + (k as f64 * 1e9 / rate) as u64
}

/// Sleeps until CLOCK_MONOTONIC reaches `deadline_ns` (at once if it has).
pub async fn sleep_until_ns(deadline_ns: u64) {
    let now = now_ns();
    if deadline_ns > now {
        tokio::time::sleep(std::time::Duration::from_nanos(deadline_ns - now)).await;
    }
}

/// Lowers the calling thread's CPU priority by `nice` steps (on Linux a
/// thread's own; threads it starts later inherit it). 0 does nothing.
pub fn lower_priority(nice: u8) -> Result<(), String> {
    if nice == 0 {
        return Ok(());
    }
    // SAFETY: plain syscalls about the calling thread (who = 0).
    let current = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let target = (current + i32::from(nice)).min(19);
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, target) } != 0 {
        return Err(format!(
            "cannot lower the worker's priority: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// User + system CPU seconds this process has used so far.
pub fn self_cpu_secs() -> f64 {
    // SAFETY: getrusage writes into the struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Our own resident set size, in bytes.
pub fn self_rss_bytes() -> u64 {
    proc_sample(std::process::id())
        .map(|s| s.rss_bytes)
        .unwrap_or(0)
}

/// One look at a process: resident memory and CPU time used so far.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ProcSample {
    pub rss_bytes: u64,
    pub cpu_secs: f64,
}

/// Reads `/proc/PID/statm` and `/proc/PID/stat`; `None` if the process is gone.
pub fn proc_sample(pid: u32) -> Option<ProcSample> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let resident: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields are counted after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after ')'.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(ProcSample {
        rss_bytes: resident * page,
        cpu_secs: (utime + stime) / tick,
    })
}
