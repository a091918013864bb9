//! Byte sizes (`--part-size 64MiB`, the API's `part_size`).
//!
//! Checked: nothing panics; a size that parses, written as plain bytes, parses to the same size.

#![no_main]

use godwit::size::Size;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(Size(bytes)) = text.parse::<Size>() {
        assert_eq!(
            bytes.to_string().parse::<Size>(),
            Ok(Size(bytes)),
            "{text:?}"
        );
    }
});
