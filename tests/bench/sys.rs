//! The two libc calls the benchmark needs, each behind a safe function.

/// Sends `signal` to process `pid`; an error names the pid and the OS reason.
#[allow(unsafe_code)]
pub fn send_signal(pid: i32, signal: i32) -> anyhow::Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is a child we spawned.
    let result = unsafe { libc::kill(pid, signal) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
            .map_err(|e| anyhow::anyhow!("kill({pid}, {signal}): {e}"))
    }
}

/// Clock ticks per second, the unit of CPU times in `/proc/<pid>/stat` (100 when unknown).
#[allow(unsafe_code)]
pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf(3) only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}
