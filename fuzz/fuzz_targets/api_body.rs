//! The body of `POST /api/migrations`: read as JSON, then checked setting by setting as the
//! handler does before it opens either side (`godwit::serve::check_new_migration`).
//!
//! Checked: nothing panics; a body that passes names its source and destination without a
//! password, as the API promises ("a URL with a password in it is refused").

#![no_main]

use godwit_storage::Location;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    if godwit::serve::check_new_migration(body).is_err() {
        return;
    }
    let value: serde_json::Value = serde_json::from_slice(body).expect("it passed, so it parses");
    for side in ["source", "dest"] {
        let text = value[side]
            .as_str()
            .expect("a passed body names both sides");
        if let Ok(Location::Table(table)) = Location::parse(text) {
            assert!(
                table.password.is_none(),
                "{side} {text:?} carries a password"
            );
        }
    }
});
