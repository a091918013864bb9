//! Numbers as a person reads them on the dashboard: counts with separators, bytes in binary
//! units, rates, durations.

/// `1234567` as `1,234,567`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// Bytes in B, KiB, MiB, GiB, TiB or PiB, three significant digits.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else if value >= 100.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else if value >= 10.0 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

/// Bytes per second, or a dash before a rate is measured.
pub fn rate(bytes_per_second: Option<f64>) -> String {
    match bytes_per_second {
        Some(rate) => format!("{}/s", bytes(rate.max(0.0).round() as u64)),
        None => "–".to_owned(),
    }
}

/// A per-second count, or a dash.
pub fn per_second(n: Option<f64>) -> String {
    match n {
        Some(n) if n >= 100.0 => count(n.round() as u64),
        Some(n) => format!("{n:.1}"),
        None => "–".to_owned(),
    }
}

/// Seconds as `2 h 05 min`, `4 min 10 s` or `12 s`; a dash when unknown.
pub fn eta(seconds: Option<u64>) -> String {
    match seconds {
        None => "–".to_owned(),
        Some(s) if s >= 86_400 => format!("{} d {:02} h", s / 86_400, s % 86_400 / 3600),
        Some(s) if s >= 3600 => format!("{} h {:02} min", s / 3600, s % 3600 / 60),
        Some(s) if s >= 60 => format!("{} min {:02} s", s / 60, s % 60),
        Some(s) => format!("{s} s"),
    }
}

/// A partition's name as one path segment of an API call (percent-escaped).
pub fn segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_a_person_reads_them() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(bytes(5 << 30), "5.00 GiB");
        assert_eq!(bytes(300 << 20), "300 MiB");
        assert_eq!(eta(Some(3725)), "1 h 02 min");
        assert_eq!(eta(Some(59)), "59 s");
        assert_eq!(eta(None), "–");
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
    }
}
