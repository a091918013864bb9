//! `--include` / `--exclude` globs, then keys matched against them.
//!
//! Checked: nothing panics; a filter takes a key exactly when its includes alone would (or there
//! are none) and its excludes alone would, as `Filter` documents.

#![no_main]

use godwit_engine::Filter;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Vec<String>, Vec<String>, Vec<String>)| {
    let (include, exclude, keys) = input;
    let Ok(both) = Filter::new(&include, &exclude) else {
        return;
    };
    let includes =
        Filter::new(&include, &[]).expect("the includes parsed together with the excludes");
    let excludes =
        Filter::new(&[], &exclude).expect("the excludes parsed together with the includes");
    let none = Filter::new(&[], &[]).expect("no pattern at all");
    for key in &keys {
        assert!(none.takes(key), "no pattern leaves out {key:?}");
        assert_eq!(
            both.takes(key),
            includes.takes(key) && excludes.takes(key),
            "{include:?} {exclude:?} {key:?}"
        );
    }
});
