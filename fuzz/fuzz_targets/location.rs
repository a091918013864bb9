//! Locations (`s3://`, `file://`, paths, database table URLs) and endpoint URLs, as a user or an
//! API client writes them.
//!
//! Checked: nothing panics; a parsed S3 or table location, shown, parses back to itself (less a
//! table's password), as the ledger relies on when workers reopen a recorded location; an
//! endpoint written one way stays that way when written again.

#![no_main]

use godwit_storage::Location;
use godwit_storage::endpoint::normalize;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let once = normalize(text);
    assert_eq!(normalize(&once), once, "normalize({text:?})");

    let Ok(location) = Location::parse(text) else {
        return;
    };
    let expected = match location {
        Location::Local(_) => return,
        Location::S3 { .. } => location,
        Location::Table(mut table) => {
            table.password = None;
            Location::Table(table)
        }
    };
    let shown = expected.to_string();
    match Location::parse(&shown) {
        Ok(again) => assert_eq!(again, expected, "{text:?} was shown as {shown:?}"),
        Err(error) => panic!("{text:?} was shown as {shown:?}, which does not parse: {error}"),
    }
});
