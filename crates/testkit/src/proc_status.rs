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
