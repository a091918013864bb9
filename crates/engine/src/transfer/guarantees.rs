//! Which conditions the destination enforces, and so how each guarantee holds on it.
//!
//! The destination is probed once, before the first write of a run (a run with nothing to write
//! writes nothing, not even the probe). Where a condition is not enforced the engine takes a safe
//! route instead, and says so on stderr and in the summary:
//! - no `If-None-Match` on PutObject or CompleteMultipartUpload: a HEAD of the key just before
//!   the write (a writer racing in between could still be overwritten: "racy");
//! - no `If-Match` on PutObject or CompleteMultipartUpload: godwit's own earlier copy is replaced
//!   after a HEAD showed it still there (racy too);
//! - no `If-Match` on DeleteObject: godwit never deletes; a write of its own that failed
//!   verification stays, recorded as its own, and the next attempt replaces it;
//! - no `If-None-Match` on CopyObject: no server-side copies; objects stream through godwit.

use godwit_storage::{Conditions, Enforcement};
use serde::Serialize;

/// How each guarantee held in a run, for the summary.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Guarantees {
    /// How a write is kept from replacing an object already at the key.
    pub no_overwrite: String,
    /// How a changed source object replaces godwit's own earlier copy, and nothing else.
    pub replace_own_copy: String,
    /// How a write of godwit's own that failed verification is taken back.
    pub take_back: String,
    /// What the probe found, condition by condition: `enforced`, `ignored`, or `unknown: why`.
    pub conditions: Option<ConditionsFound>,
}

/// The probe's findings, as text.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ConditionsFound {
    /// `If-None-Match: *` on PutObject.
    pub put_if_none_match: String,
    /// `If-Match` on PutObject.
    pub put_if_match: String,
    /// `If-None-Match: *` on CompleteMultipartUpload.
    pub complete_if_none_match: String,
    /// `If-Match` on CompleteMultipartUpload.
    pub complete_if_match: String,
    /// `If-Match` on DeleteObject.
    pub delete_if_match: String,
    /// `If-None-Match: *` on CopyObject.
    pub copy_if_none_match: String,
}

const ENFORCED: &str = "enforced by server";
pub(super) const RACY: &str = "checked before write (racy)";
const NOT_PROBED: &str = "not probed (nothing was written)";

fn text(enforcement: &Enforcement) -> String {
    match enforcement {
        Enforcement::Enforced => "enforced".to_owned(),
        Enforcement::Ignored => "ignored".to_owned(),
        Enforcement::Unknown(why) => format!("unknown: {why}"),
    }
}

/// Both conditions of a pair (single PUT, multipart completion) as one guarantee.
fn pair(single: &Enforcement, multipart: &Enforcement) -> String {
    match (single.is_enforced(), multipart.is_enforced()) {
        (true, true) => ENFORCED.to_owned(),
        (false, false) => RACY.to_owned(),
        (true, false) => format!("{ENFORCED} for single PUTs; {RACY} for multipart uploads"),
        (false, true) => format!("{RACY} for single PUTs; {ENFORCED} for multipart uploads"),
    }
}

impl Guarantees {
    /// How the guarantees hold on a destination with `conditions`; `None` when it was never
    /// probed.
    pub(crate) fn of(conditions: Option<&Conditions>) -> Self {
        let Some(c) = conditions else {
            return Self {
                no_overwrite: NOT_PROBED.to_owned(),
                replace_own_copy: NOT_PROBED.to_owned(),
                take_back: NOT_PROBED.to_owned(),
                conditions: None,
            };
        };
        Self {
            no_overwrite: pair(&c.put_if_none_match, &c.complete_if_none_match),
            replace_own_copy: pair(&c.put_if_match, &c.complete_if_match),
            take_back: if c.delete_if_match.is_enforced() {
                "conditional delete (If-Match enforced by server)".to_owned()
            } else {
                "never deletes: the server ignores If-Match on DeleteObject, so an unverified write \
                 stays, recorded as godwit's own, and is replaced"
                    .to_owned()
            },
            conditions: Some(ConditionsFound {
                put_if_none_match: text(&c.put_if_none_match),
                put_if_match: text(&c.put_if_match),
                complete_if_none_match: text(&c.complete_if_none_match),
                complete_if_match: text(&c.complete_if_match),
                delete_if_match: text(&c.delete_if_match),
                copy_if_none_match: text(&c.copy_if_none_match),
            }),
        }
    }
}

/// Says on stderr (a warning) what the destination does not enforce and what godwit does
/// instead.
pub(super) fn warn_about(conditions: &Conditions, endpoint: &str) {
    let missing = |e: &Enforcement| !e.is_enforced();
    if missing(&conditions.put_if_none_match) || missing(&conditions.complete_if_none_match) {
        tracing::warn!(
            "{endpoint} does not enforce If-None-Match on PutObject ({}) or CompleteMultipartUpload ({}): \
             godwit looks at each key just before writing it instead; a writer racing in between could \
             still be overwritten",
            text(&conditions.put_if_none_match),
            text(&conditions.complete_if_none_match)
        );
    }
    if missing(&conditions.put_if_match) || missing(&conditions.complete_if_match) {
        tracing::warn!(
            "{endpoint} does not enforce If-Match on PutObject ({}) or CompleteMultipartUpload ({}): \
             godwit replaces its own earlier copy of a changed object only after checking it is \
             still there, which a writer racing in between could defeat",
            text(&conditions.put_if_match),
            text(&conditions.complete_if_match)
        );
    }
    if missing(&conditions.delete_if_match) {
        tracing::warn!(
            "{endpoint} does not enforce If-Match on DeleteObject ({}): godwit will not delete \
             anything there; a write of its own that fails verification stays, recorded as its own, \
             and is replaced",
            text(&conditions.delete_if_match)
        );
    }
}
