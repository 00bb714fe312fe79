//! The server's CPU time over a phase (`--server-pid`): user + system time
//! from `/proc/<pid>/stat`, read before and after, for any server on this
//! machine (Echolia's or Atuin's); and the load generator's own, read the
//! same way, since the two share the machine's cores: their sum per event
//! bounds the throughput the machine can give.

use std::time::Instant;

use serde::Serialize;

/// Units of the times in `/proc/<pid>/stat`: USER_HZ, 100 on Linux whatever the kernel's tick.
const TICKS_PER_SEC: f64 = 100.0;

/// A reading taken at the start of a phase.
pub struct CpuProbe {
    pid: u32,
    ticks: u64,
    own_ticks: u64,
    at: Instant,
}

/// The server's CPU over a phase.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ServerCpu {
    pub pid: u32,
    /// User + system CPU seconds of the server's process (all its threads).
    pub cpu_secs: f64,
    /// Wall seconds between the two readings.
    pub wall_secs: f64,
    /// CPU seconds per wall second: cores kept busy.
    pub cores: f64,
    /// Events the server acknowledged in the phase.
    pub pushed_events: u64,
    /// CPU microseconds per acknowledged event (absent when none was pushed).
    pub us_per_event: Option<f64>,
    /// The load generator's own CPU seconds over the same phase.
    pub generator_cpu_secs: f64,
    /// The load generator's CPU microseconds per acknowledged event.
    pub generator_us_per_event: Option<f64>,
}

impl CpuProbe {
    /// Reads the server's CPU time now; None without `--server-pid`.
    pub fn start(pid: Option<u32>) -> Result<Option<Self>, String> {
        let Some(pid) = pid else { return Ok(None) };
        let own_ticks = cpu_ticks(std::process::id())?;
        Ok(Some(CpuProbe { pid, ticks: cpu_ticks(pid)?, own_ticks, at: Instant::now() }))
    }

    /// Reads it again: the CPU spent since [`CpuProbe::start`]. None (said on stderr) if the
    /// process is gone.
    pub fn finish(self, pushed_events: u64) -> Option<ServerCpu> {
        let wall_secs = self.at.elapsed().as_secs_f64().max(1e-9);
        let ticks = match cpu_ticks(self.pid) {
            Ok(ticks) => ticks,
            Err(message) => {
                eprintln!("echolia-load: {message}");
                return None;
            }
        };
        let own_ticks = cpu_ticks(std::process::id()).unwrap_or(self.own_ticks);
        let cpu_secs = ticks.saturating_sub(self.ticks) as f64 / TICKS_PER_SEC;
        let generator_cpu_secs = own_ticks.saturating_sub(self.own_ticks) as f64 / TICKS_PER_SEC;
        let per_event = |secs: f64| (pushed_events > 0).then(|| secs * 1e6 / pushed_events as f64);
        Some(ServerCpu {
            pid: self.pid,
            cpu_secs,
            wall_secs,
            cores: cpu_secs / wall_secs,
            pushed_events,
            us_per_event: per_event(cpu_secs),
            generator_cpu_secs,
            generator_us_per_event: per_event(generator_cpu_secs),
        })
    }
}

/// Reads it once to check `--server-pid` names a process this user can see.
pub fn check(pid: Option<u32>) -> Result<(), String> {
    pid.map_or(Ok(()), |pid| cpu_ticks(pid).map(drop))
}

/// utime + stime of `pid`, in USER_HZ ticks.
fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|err| format!("--server-pid: reading {path}: {err}"))?;
    parse_ticks(&stat).ok_or_else(|| format!("--server-pid: {path} has no utime and stime"))
}

/// utime and stime are fields 14 and 15; the command name (field 2) is in
/// parentheses and may hold spaces, so fields are counted after its last `)`.
fn parse_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utime_and_stime_are_read_after_the_command_name() {
        let stat = "4242 (echolia (x) y) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_ticks(stat), Some(325));
        assert_eq!(parse_ticks("4242 (short"), None);
    }

    #[test]
    fn this_process_can_be_measured() {
        let probe = CpuProbe::start(Some(std::process::id())).unwrap().unwrap();
        let cpu = probe.finish(10).unwrap();
        assert!(cpu.cpu_secs >= 0.0 && cpu.us_per_event.is_some());
        assert!(cpu.generator_cpu_secs >= 0.0 && cpu.generator_us_per_event.is_some());
        assert!(CpuProbe::start(None).unwrap().is_none());
    }
}
