//! Manifests (`migrate --manifest FILE`): JSON Lines and CSV. The first byte picks the format,
//! the rest is the file.
//!
//! Checked: nothing panics; a manifest that parses names at least one object, each once, in key
//! order, each key relative (no leading `/`, no empty, `.` or `..` part).

#![no_main]

use std::path::Path;

use godwit_storage::manifest::{Manifest, ManifestFormat};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&choice, bytes)) = data.split_first() else {
        return;
    };
    let format = match choice % 3 {
        0 => ManifestFormat::JsonLines,
        1 => ManifestFormat::Csv,
        _ => ManifestFormat::of(Path::new("manifest"), bytes),
    };
    let Ok(manifest) = Manifest::parse(bytes, format) else {
        return;
    };
    assert!(!manifest.entries.is_empty());
    assert_eq!(manifest.digest.len(), 32);
    for pair in manifest.entries.windows(2) {
        assert!(
            pair[0].key < pair[1].key,
            "{:?} then {:?}",
            pair[0].key,
            pair[1].key
        );
    }
    for entry in &manifest.entries {
        let key = &entry.key;
        assert!(!key.starts_with('/'), "{key:?}");
        assert!(
            key.split('/').all(|part| !matches!(part, "" | "." | "..")),
            "{key:?}"
        );
    }
});
