//! Byte sizes on the command line: `4096`, `512K`, `64MiB`, `1G` (all multiples are powers of 1024).

use std::str::FromStr;

/// A number of bytes, parsed from text such as `64MiB` (see [`FromStr`] below).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Size(
    /// The number of bytes.
    pub u64,
);

impl FromStr for Size {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (digits, unit) = trimmed.split_at(split);
        let number: u64 = digits.parse().map_err(|_| {
            format!("'{text}' is not a size: write e.g. 4096, 512KiB, 64MiB or 1GiB")
        })?;
        let shift = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            "t" | "tb" | "tib" => 40,
            _ => {
                return Err(format!(
                    "'{text}': unknown unit '{unit}': use K, M, G or T (powers of 1024)"
                ));
            }
        };
        number
            .checked_mul(1 << shift)
            .map(Size)
            .ok_or_else(|| format!("'{text}' is too large"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        for (text, bytes) in [
            ("4096", 4096),
            ("512K", 512 << 10),
            ("64MiB", 64 << 20),
            ("1 GB", 1 << 30),
            ("2t", 2 << 40),
        ] {
            assert_eq!(text.parse::<Size>(), Ok(Size(bytes)), "{text}");
        }
        for text in ["", "MiB", "1.5G", "12 parsecs", "99999999999T"] {
            assert!(text.parse::<Size>().is_err(), "{text}");
        }
    }
}
