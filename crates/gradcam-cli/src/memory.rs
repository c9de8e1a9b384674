//! The host memory a run plans for (how many images a pass and a chunk hold, which images or
//! factorisations are refused): the machine's, its container's limit where that is lower,
//! and `GRADCAM_MEMORY` where that is lower still (runs sharing a machine; a test of what a
//! small machine would do).

/// The environment variable that caps the memory a run plans for.
pub const ENV: &str = "GRADCAM_MEMORY";

/// The memory a run plans for, in bytes; None where neither the machine's nor a cap can be
/// read. A malformed `GRADCAM_MEMORY` is refused by [`check_env`] before any command runs.
pub fn bytes() -> Option<u64> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let machine = machine_from(
        read("/proc/meminfo").as_deref(),
        read("/sys/fs/cgroup/memory.max")
            .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
            .as_deref(),
    );
    lowest(machine, cap())
}

/// Whose memory [`bytes`] is, for messages: the cap's where it is what binds.
pub fn whose() -> &'static str {
    match cap() {
        Some(c) if bytes() == Some(c) => "the GRADCAM_MEMORY cap's",
        _ => "this machine's (or its container's)",
    }
}

/// An amount of memory for messages, in the powers of 1024 `GRADCAM_MEMORY` takes:
/// `23.5 GiB`, `488 MiB`, `12 KiB`.
pub use gradcam::memory_amount as amount;

/// `GRADCAM_MEMORY` read: Ok(None) where it is not set or empty.
pub fn check_env() -> Result<Option<u64>, String> {
    match std::env::var(ENV) {
        // (Empty is unset, as `GRADCAM_MEMORY= gradcam ...` means.)
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => parse_amount(&v)
            .map(Some)
            .map_err(|why| format!("{ENV}={v}: {why}")),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(v)) => Err(format!(
            "{ENV}={}: not an amount of memory (e.g. 8G, 512M, or bytes)",
            v.to_string_lossy()
        )),
    }
}

fn cap() -> Option<u64> {
    check_env().ok().flatten()
}

fn lowest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The machine's memory from `/proc/meminfo` and a container's limit (cgroup v2's
/// `memory.max`, `max` when there is none, or v1's `memory.limit_in_bytes`).
fn machine_from(meminfo: Option<&str>, cgroup: Option<&str>) -> Option<u64> {
    let total = meminfo.and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    });
    let limit = cgroup.and_then(|c| c.trim().parse::<u64>().ok());
    lowest(total, limit)
}

/// `8G`, `1.5GiB`, `512m`, `300MB`, `4096`: bytes, or K, M, G, T in powers of 1024 (as
/// `docker --memory` counts them), with or without `B` / `iB`, in any case.
fn parse_amount(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let Ok(value) = number.parse::<f64>() else {
        return Err("not an amount of memory (e.g. 8G, 512M, or bytes)".into());
    };
    let unit = unit.trim().to_ascii_lowercase();
    let scale: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` (bytes, or K, M, G, T: e.g. 8G, 512M)"
            ))
        }
    };
    let bytes = value * scale as f64;
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err("must be at least one byte and less than 16 EiB".into());
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The machine's memory, the container's limit when lower; no limit is `max`.
    #[test]
    fn machine_memory_and_container_limits() {
        let meminfo = "MemTotal:       25165824 kB\nMemFree: 1 kB\n";
        assert_eq!(machine_from(Some(meminfo), None), Some(24 << 30));
        assert_eq!(machine_from(Some(meminfo), Some("max\n")), Some(24 << 30));
        let limit = Some("17179869184\n");
        assert_eq!(machine_from(Some(meminfo), limit), Some(16 << 30));
        assert_eq!(machine_from(None, limit), Some(16 << 30));
        assert_eq!(machine_from(None, None), None);
        assert_eq!(lowest(Some(5), Some(3)), Some(3));
        assert_eq!(lowest(None, Some(3)), Some(3));
    }

    /// Amounts in powers of 1024 with or without B / iB, in any case; no unit is bytes;
    /// nonsense, unknown units, nothing and zero are refused.
    #[test]
    fn amounts_of_memory() {
        assert_eq!(parse_amount("8G"), Ok(8 << 30));
        assert_eq!(parse_amount(" 8 gib "), Ok(8 << 30));
        assert_eq!(parse_amount("1.5GB"), Ok(3 << 29));
        assert_eq!(parse_amount("512m"), Ok(512 << 20));
        assert_eq!(parse_amount("300MiB"), Ok(300 << 20));
        assert_eq!(parse_amount("2T"), Ok(2 << 40));
        assert_eq!(parse_amount("64k"), Ok(64 << 10));
        assert_eq!(parse_amount("4096"), Ok(4096));
        assert_eq!(parse_amount("4096b"), Ok(4096));
        for bad in [
            "", "G", "lots", "8 X", "8ib", "8kbb", "1.2.3G", "-1G", "0", "0.1", "1e30T",
        ] {
            assert!(parse_amount(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_amount("8P").unwrap_err().contains("unknown unit `p`"));
        let shown: Vec<_> = [3 << 29, 512_000_000, 1 << 20, 12_345, 100]
            .map(amount)
            .to_vec();
        assert_eq!(
            shown,
            ["1.5 GiB", "488 MiB", "1 MiB", "12 KiB", "100 bytes"]
        );
    }
}
