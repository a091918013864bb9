//! What ETags prove: an MD5 ETag is the MD5 of the bytes; a multipart one, `md5(part md5s)-N`.
//! Equal MD5-made ETags mean equal bytes; unequal ones prove nothing (SSE-KMS makes others).

use bytes::Bytes;
use md5::{Digest, Md5};

/// What we can show of the bytes we sent, beyond their CRC-64/NVME: the ETag a server that
/// computes MD5 ETags would give them.
pub(super) enum Evidence<'a> {
    /// The whole body (a single PUT): its MD5 is the ETag.
    Body(&'a Bytes),
    /// The multipart ETag `md5(part md5s)-N`, when every part's MD5 is known.
    MultipartEtag(String),
    /// Nothing beyond the checksum.
    Nothing,
}

impl Evidence<'_> {
    /// Whether `etag` is the one our bytes give. A mismatch proves nothing (SSE-KMS and some
    /// servers make other ETags), so callers fall back to a read-back instead of a verdict.
    pub(super) fn etag_matches(&self, etag: Option<&str>) -> bool {
        let Some(etag) = etag.map(|e| e.trim_matches('"')) else {
            return false;
        };
        match self {
            Evidence::Body(body) => {
                is_md5_etag(etag).is_some_and(|hex| md5_hex(body).eq_ignore_ascii_case(hex))
            }
            Evidence::MultipartEtag(expected) => expected.eq_ignore_ascii_case(etag),
            Evidence::Nothing => false,
        }
    }
}

/// The ETag of a multipart object made of parts with these MD5s (hex).
pub(super) fn multipart_etag(part_md5s: &[&str]) -> Option<String> {
    let mut digest = Md5::new();
    for hex in part_md5s {
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<_>>()?;
        digest.update(&bytes);
    }
    let whole: String = digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Some(format!("{whole}-{}", part_md5s.len()))
}

/// Whether `etag` is `source_etag` (quotes and case aside), both MD5-made: a plain MD5, or a
/// multipart ETag `md5(part md5s)-N`. Equal ETags of either form mean equal bytes, however the
/// parts were cut; unequal ones prove nothing (encrypted objects have other ETags).
pub(super) fn same_content_etag(etag: Option<&str>, source_etag: &str) -> bool {
    fn md5_made(etag: &str) -> Option<&str> {
        let etag = etag.trim_matches('"');
        (is_md5_etag(etag).is_some() || multipart_etag_parts(etag).is_some()).then_some(etag)
    }
    match (etag.and_then(md5_made), md5_made(source_etag)) {
        (Some(ours), Some(theirs)) => ours.eq_ignore_ascii_case(theirs),
        _ => false,
    }
}

/// The part count of a multipart ETag `md5(part md5s)-N`, or `None` for any other ETag.
pub(super) fn multipart_etag_parts(etag: &str) -> Option<u32> {
    let (md5, parts) = etag.trim_matches('"').split_once('-')?;
    is_md5_etag(md5)?;
    parts.parse().ok().filter(|&n| n > 0)
}

pub(super) fn is_md5_etag(etag: &str) -> Option<&str> {
    let hex = etag.trim_matches('"');
    (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

pub(super) fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_etags_are_made_of_part_md5s() {
        // Two parts "abc" and "def": md5(md5("abc") ++ md5("def")) with the part count.
        let parts = [md5_hex(b"abc"), md5_hex(b"def")];
        let mut joined = Md5::digest(b"abc").to_vec();
        joined.extend_from_slice(&Md5::digest(b"def"));
        let expected = format!("{}-2", md5_hex(&joined));
        assert_eq!(
            multipart_etag(&[&parts[0], &parts[1]]),
            Some(expected.clone())
        );
        let evidence = Evidence::MultipartEtag(expected.clone());
        assert!(evidence.etag_matches(Some(&format!("\"{expected}\""))));
        assert!(!evidence.etag_matches(Some("\"00000000000000000000000000000000-2\"")));
        assert!(!Evidence::Nothing.etag_matches(Some(&expected)));
    }

    #[test]
    fn md5_etags_are_recognised() {
        assert_eq!(
            is_md5_etag("\"900150983cd24fb0d6963f7d28e17f72\""),
            Some("900150983cd24fb0d6963f7d28e17f72")
        );
        assert_eq!(is_md5_etag("\"900150983cd24fb0d6963f7d28e17f72-2\""), None);
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
    }
}
