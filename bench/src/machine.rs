//! What the machine's CPUs did, from /proc: the broker's and the bench's
//! own CPU time, and everyone's. The build machine is shared, so a round
//! says how much of its CPUs something else used meanwhile.

use std::time::Duration;

use anyhow::Context;

/// Linux counts CPU time in USER_HZ, 100 a second.
const TICKS_PER_SECOND: u64 = 100;

fn ticks(n: u64) -> Duration {
    Duration::from_millis(n * 1000 / TICKS_PER_SECOND)
}

/// The CPU time process `pid` has used so far, user and system, all threads.
pub fn process_cpu(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After the command name, which is in parentheses and may hold spaces,
    // utime and stime are the 12th and 13th fields.
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .context("an unreadable /proc/PID/stat")?
        .1
        .split_whitespace()
        .collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        Ok(fields.get(i).context("a short /proc/PID/stat")?.parse()?)
    };
    Ok(ticks(field(11)? + field(12)?))
}

/// The CPU time all CPUs have spent so far on processes (user and system)
/// and in the hypervisor's hands (steal), and how many CPUs there are.
/// Interrupts are left out: they are mostly the benchmark's own loopback
/// traffic, which no process is charged with.
pub fn busy_cpu() -> anyhow::Result<(Duration, usize)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let mut lines = stat.lines();
    let total = lines.next().context("an empty /proc/stat")?;
    let values: Vec<u64> = total
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    // user nice system idle iowait irq softirq steal (guest time is
    // counted in user already).
    let busy: u64 = [0, 1, 2, 7].iter().filter_map(|&i| values.get(i)).sum();
    let cpus = lines.filter(|l| l.starts_with("cpu")).count();
    Ok((ticks(busy), cpus.max(1)))
}

/// A reading to compare with a later one.
pub struct Reading {
    at: std::time::Instant,
    busy: Duration,
    cpus: usize,
    broker: Duration,
    bench: Duration,
}

impl Reading {
    /// The machine now, with the broker `broker_pid`.
    pub fn now(broker_pid: u32) -> anyhow::Result<Reading> {
        let (busy, cpus) = busy_cpu()?;
        Ok(Reading {
            at: std::time::Instant::now(),
            busy,
            cpus,
            broker: process_cpu(broker_pid)?,
            bench: process_cpu(std::process::id())?,
        })
    }

    /// Since `earlier`: the broker's CPU time, and the share of all CPUs
    /// that went to neither the broker nor the bench (other processes, and
    /// time the hypervisor took), in %.
    pub fn since(&self, earlier: &Reading) -> (Duration, f64) {
        let broker = self.broker.saturating_sub(earlier.broker);
        let ours = broker + self.bench.saturating_sub(earlier.bench);
        let others = self.busy.saturating_sub(earlier.busy).saturating_sub(ours);
        let capacity = (self.at - earlier.at).as_secs_f64() * self.cpus as f64;
        (broker, others.as_secs_f64() / capacity * 100.0)
    }
}
