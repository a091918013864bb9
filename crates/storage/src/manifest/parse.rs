//! Reading a manifest: JSON Lines or CSV, every line checked before any is used.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use md5::{Digest, Md5};

use crate::Crc64Nvme;

/// The fields a manifest entry may have; anything else is refused.
const FIELDS: &[&str] = &[
    "source",
    "dest",
    "group",
    "partition",
    "size",
    "checksum",
    "content_type",
];

/// One object a manifest names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    /// The line of the manifest it was read from (1-based).
    pub line: usize,
    /// Its key, relative to the source.
    pub key: String,
    /// The group (all-or-nothing unit) the manifest places it in.
    pub group: Option<String>,
    /// The partition (checkpoint unit) the manifest places it in.
    pub partition: Option<String>,
    /// The size the manifest expects it to have.
    pub size: Option<u64>,
    /// The CRC-64/NVME the manifest gives for it (checked for its form only, for now).
    pub checksum: Option<Crc64Nvme>,
    /// The Content-Type to send it with, instead of the source's.
    pub content_type: Option<String>,
}

/// A manifest's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestFormat {
    /// One JSON object a line.
    JsonLines,
    /// Comma-separated values under a header naming the columns.
    Csv,
}

impl ManifestFormat {
    /// The format a file's name says (`.jsonl`, `.ndjson`, `.csv`), else the one its first
    /// non-blank character says (`{`: JSON Lines, anything else: CSV).
    pub fn of(path: &Path, bytes: &[u8]) -> Self {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match extension.as_deref() {
            Some("jsonl" | "ndjson") => Self::JsonLines,
            Some("csv") => Self::Csv,
            _ => match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
                Some(b'{') => Self::JsonLines,
                _ => Self::Csv,
            },
        }
    }
}

/// What is wrong with a manifest, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The line at fault, when one is.
    pub line: Option<usize>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self {
                line: Some(line),
                message,
            } => write!(f, "line {line}: {message}"),
            Self {
                line: None,
                message,
            } => f.write_str(message),
        }
    }
}

impl std::error::Error for ManifestError {}

fn at(line: usize, message: impl Into<String>) -> ManifestError {
    ManifestError {
        line: Some(line),
        message: message.into(),
    }
}

/// A manifest read whole: its entries in key order, and a digest of its bytes.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The entries, sorted by key (UTF-8 bytes, as S3 lists them).
    pub entries: Vec<ManifestEntry>,
    /// The MD5 of the file's bytes (hex), so a changed manifest is noticed.
    pub digest: String,
}

impl Manifest {
    /// Reads and checks the manifest at `path`.
    pub fn read(path: &Path) -> Result<Self, ManifestError> {
        let bytes = std::fs::read(path).map_err(|e| ManifestError {
            line: None,
            message: format!("cannot be read: {e}"),
        })?;
        Self::parse(&bytes, ManifestFormat::of(path, &bytes))
    }

    /// Parses a manifest's bytes; the first line at fault fails the whole manifest.
    pub fn parse(bytes: &[u8], format: ManifestFormat) -> Result<Self, ManifestError> {
        let mut entries = match format {
            ManifestFormat::JsonLines => json_lines(bytes)?,
            ManifestFormat::Csv => csv(bytes)?,
        };
        if entries.is_empty() {
            return Err(ManifestError {
                line: None,
                message: "names no object; give one object a line".to_owned(),
            });
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for entry in &entries {
            if let Some(first) = seen.insert(&entry.key, entry.line) {
                return Err(at(
                    entry.line,
                    format!(
                        "'{}' is named again (first on line {first}); name each object once",
                        entry.key
                    ),
                ));
            }
        }
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        let digest = Md5::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Self { entries, digest })
    }
}

fn json_lines(bytes: &[u8]) -> Result<Vec<ManifestEntry>, ManifestError> {
    let text = std::str::from_utf8(bytes).map_err(|e| ManifestError {
        line: Some(
            bytes[..e.valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1,
        ),
        message: "is not UTF-8 text".to_owned(),
    })?;
    let mut entries = Vec::new();
    for (index, text) in text.lines().enumerate() {
        let line = index + 1;
        if text.trim().is_empty() {
            continue;
        }
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)
            .map_err(|e| {
                at(
                    line,
                    format!("not a JSON object ({e}); write one object a line, e.g. {{\"source\": \"a/b.txt\"}}"),
                )
            })?;
        let mut fields = Vec::new();
        for (name, value) in object {
            let value = match value {
                serde_json::Value::Null => continue,
                serde_json::Value::String(text) => text,
                serde_json::Value::Number(number) if name == "size" => number.to_string(),
                other => {
                    return Err(at(
                        line,
                        format!("\"{name}\" is {other}; it must be a string"),
                    ));
                }
            };
            fields.push((name, value));
        }
        entries.push(entry(line, fields)?);
    }
    Ok(entries)
}

fn csv(bytes: &[u8]) -> Result<Vec<ManifestEntry>, ManifestError> {
    let mut reader = csv::ReaderBuilder::new().from_reader(bytes);
    let csv_error = |e: csv::Error| {
        let line = e.position().map_or(1, |p| p.line() as usize);
        let message = match e.kind() {
            csv::ErrorKind::UnequalLengths {
                expected_len, len, ..
            } => format!("{len} values under a header of {expected_len} columns"),
            csv::ErrorKind::Utf8 { .. } => "is not UTF-8 text".to_owned(),
            _ => e.to_string(),
        };
        at(line, message)
    };
    let header: Vec<String> = reader
        .headers()
        .map_err(csv_error)?
        .iter()
        .map(|h| h.trim().to_owned())
        .collect();
    if !header.iter().any(|h| h == "source") {
        return Err(at(
            1,
            format!(
                "the header names no `source` column; its columns may be {}",
                FIELDS.join(", ")
            ),
        ));
    }
    let mut entries = Vec::new();
    for record in reader.records() {
        let record = record.map_err(csv_error)?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        let fields = header
            .iter()
            .zip(record.iter())
            .filter(|(_, value)| !value.is_empty())
            .map(|(name, value)| (name.clone(), value.to_owned()))
            .collect();
        entries.push(entry(line, fields)?);
    }
    Ok(entries)
}

/// One entry from its fields (empty ones left out), checked.
fn entry(line: usize, fields: Vec<(String, String)>) -> Result<ManifestEntry, ManifestError> {
    let mut entry = ManifestEntry {
        line,
        key: String::new(),
        group: None,
        partition: None,
        size: None,
        checksum: None,
        content_type: None,
    };
    let mut dest = None;
    for (name, value) in fields {
        match name.as_str() {
            "source" => entry.key = value,
            "dest" => dest = Some(value),
            "group" => entry.group = Some(value),
            "partition" => entry.partition = Some(value),
            "size" => {
                entry.size =
                    Some(value.parse().map_err(|_| {
                        at(line, format!("size '{value}' is not a number of bytes"))
                    })?);
            }
            "checksum" => {
                entry.checksum = Some(Crc64Nvme::from_base64(&value).ok_or_else(|| {
                    at(
                        line,
                        format!(
                            "checksum '{value}' is not a CRC-64/NVME in base64 (12 characters, as S3's x-amz-checksum-crc64nvme)"
                        ),
                    )
                })?);
            }
            "content_type" => entry.content_type = Some(value),
            other => {
                return Err(at(
                    line,
                    format!(
                        "unknown field '{other}'; the fields are {}",
                        FIELDS.join(", ")
                    ),
                ));
            }
        }
    }
    if entry.key.is_empty() {
        return Err(at(
            line,
            "no `source`: give the object's key relative to SOURCE",
        ));
    }
    if entry.key.starts_with('/')
        || entry
            .key
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(at(
            line,
            format!(
                "source '{}' is not a relative key: write it as below SOURCE, e.g. a/b.txt (no leading '/', no empty, '.' or '..' parts)",
                entry.key
            ),
        ));
    }
    if let Some(dest) = dest
        && dest != entry.key
    {
        return Err(at(
            line,
            format!(
                "dest '{dest}' differs from source '{}': another destination key is not supported yet; leave dest out (objects keep their source key)",
                entry.key
            ),
        ));
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, format: ManifestFormat) -> Result<Manifest, ManifestError> {
        Manifest::parse(text.as_bytes(), format)
    }

    fn fails_at(text: &str, format: ManifestFormat, line: usize, says: &str) {
        let error = parse(text, format).unwrap_err();
        assert_eq!(error.line, Some(line), "{error}");
        assert!(error.message.contains(says), "{error}");
    }

    #[test]
    fn json_lines_are_read_in_key_order() {
        let manifest = parse(
            "{\"source\": \"b.txt\", \"group\": \"g\", \"size\": 3}\n\n{\"source\": \"a/x.bin\", \"partition\": \"p\", \"content_type\": \"text/plain\", \"checksum\": \"AAAAAAAAAAA=\", \"dest\": \"a/x.bin\"}\n",
            ManifestFormat::JsonLines,
        )
        .unwrap();
        let keys: Vec<_> = manifest.entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["a/x.bin", "b.txt"]);
        assert_eq!(manifest.entries[0].line, 3);
        assert_eq!(manifest.entries[0].checksum, Some(Crc64Nvme(0)));
        assert_eq!(
            manifest.entries[0].content_type.as_deref(),
            Some("text/plain")
        );
        assert_eq!(manifest.entries[1].group.as_deref(), Some("g"));
        assert_eq!(manifest.entries[1].size, Some(3));
        assert_eq!(manifest.digest.len(), 32);
    }

    #[test]
    fn csv_is_read_under_its_header() {
        let manifest = parse(
            "source,partition,size\nb.txt,p1,\na.txt,,12\n",
            ManifestFormat::Csv,
        )
        .unwrap();
        assert_eq!(manifest.entries[0].key, "a.txt");
        assert_eq!(manifest.entries[0].line, 3);
        assert_eq!(manifest.entries[0].size, Some(12));
        assert_eq!(manifest.entries[0].partition, None);
        assert_eq!(manifest.entries[1].partition.as_deref(), Some("p1"));
    }

    #[test]
    fn bad_lines_are_named() {
        use ManifestFormat::{Csv, JsonLines};
        let good = "{\"source\": \"a\"}\n";
        fails_at(
            &format!("{good}{good}{{nope\n"),
            JsonLines,
            3,
            "not a JSON object",
        );
        fails_at(
            &format!("{{\"source\": \"b\"}}\n{good}{good}"),
            JsonLines,
            3,
            "first on line 2",
        );
        fails_at(
            "{\"source\": \"a\", \"colour\": \"red\"}",
            JsonLines,
            1,
            "unknown field 'colour'",
        );
        fails_at(
            "{\"source\": \"a\", \"size\": \"big\"}",
            JsonLines,
            1,
            "size 'big'",
        );
        fails_at(
            "{\"source\": \"a\", \"size\": -1}",
            JsonLines,
            1,
            "size '-1'",
        );
        fails_at(
            "{\"source\": \"a\", \"checksum\": \"xyz\"}",
            JsonLines,
            1,
            "not a CRC-64",
        );
        fails_at(
            "{\"source\": \"a\", \"dest\": \"b\"}",
            JsonLines,
            1,
            "not supported yet",
        );
        fails_at(
            "{\"source\": \"/etc/passwd\"}",
            JsonLines,
            1,
            "not a relative key",
        );
        fails_at(
            "{\"source\": \"a/../../b\"}",
            JsonLines,
            1,
            "not a relative key",
        );
        fails_at("{\"group\": \"g\"}", JsonLines, 1, "no `source`");
        fails_at("{\"source\": 7}", JsonLines, 1, "must be a string");
        fails_at("source,size\na,1\n,2\n", Csv, 3, "no `source`");
        fails_at(
            "source,size\na,1\nb\n",
            Csv,
            3,
            "1 values under a header of 2",
        );
        fails_at("key,size\na,1\n", Csv, 1, "no `source` column");
        fails_at("source,colour\na,red\n", Csv, 2, "unknown field 'colour'");
        assert_eq!(parse("\n", JsonLines).unwrap_err().line, None);
    }

    #[test]
    fn format_by_name_then_by_content() {
        let of = |name: &str, text: &str| ManifestFormat::of(Path::new(name), text.as_bytes());
        assert_eq!(of("m.JSONL", "source\n"), ManifestFormat::JsonLines);
        assert_eq!(of("m.ndjson", ""), ManifestFormat::JsonLines);
        assert_eq!(of("m.csv", "{"), ManifestFormat::Csv);
        assert_eq!(
            of("m.txt", "\n  {\"source\": \"a\"}"),
            ManifestFormat::JsonLines
        );
        assert_eq!(of("m", "source\na\n"), ManifestFormat::Csv);
    }
}
