//! Memory figures of a process from `/proc/PID/status`, for the benchmarks.

/// A `kB` field of `/proc/{pid}/status` (`pid` a number or `self`) in MiB; 0 when the
/// process is gone or the field absent.
pub fn status_mib(pid: &str, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.split(':').next() == Some(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Peak resident set (`VmHWM`) of process `pid`, in MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    status_mib(&pid.to_string(), "VmHWM")
}

/// Wait for `child` to exit, sampling its peak resident set every 20 ms: its exit status
/// and peak RSS in MiB.
pub fn wait_with_peak_rss(
    child: &mut std::process::Child,
) -> std::io::Result<(std::process::ExitStatus, f64)> {
    let mut peak = 0.0f64;
    loop {
        peak = peak.max(peak_rss_mib(child.id()));
        if let Some(status) = child.try_wait()? {
            return Ok((status, peak));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// User + system CPU time of this process's waited-for children (`/proc/self/stat`).
pub fn children_cpu() -> std::time::Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): cutime and cstime are the
    // 14th and 15th of them.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<u64> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let ticks = fields.get(13).copied().unwrap_or(0) + fields.get(14).copied().unwrap_or(0);
    std::time::Duration::from_millis(ticks * 10)
}
