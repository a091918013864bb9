//! The destination's listing walked beside the ledger, both in key order: one LIST per 1,000
//! keys, however many keys are looked for.

use std::collections::VecDeque;

use godwit_storage::{Destination, Listed, Listing, ObjectMeta};

use crate::EngineError;

/// The destination's listing, read as far as the keys looked for.
pub(crate) struct DestinationWalk {
    listing: Listing,
    listed: VecDeque<ObjectMeta>,
    over: bool,
}

impl DestinationWalk {
    pub(crate) fn new(dest: &dyn Destination) -> Self {
        Self {
            listing: dest.list(),
            listed: VecDeque::new(),
            over: false,
        }
    }

    /// The destination's object at `key`, if it has one. Keys must be asked for in increasing
    /// order: what the destination holds before `key` is passed over (objects godwit did not
    /// write).
    pub(crate) async fn find(&mut self, key: &str) -> Result<Option<ObjectMeta>, EngineError> {
        loop {
            if self.listed.is_empty() && !self.over {
                match self.listing.recv().await {
                    Some(Ok(entries)) => {
                        self.listed
                            .extend(entries.into_iter().filter_map(|e| match e {
                                Listed::Object(meta) => Some(meta),
                                Listed::Unreadable { .. } => None,
                            }))
                    }
                    Some(Err(error)) => return Err(EngineError::Destination(error)),
                    None => self.over = true,
                }
                continue;
            }
            match self.listed.front() {
                Some(front) if front.key.as_str() < key => {
                    self.listed.pop_front();
                }
                Some(front) if front.key == key => return Ok(self.listed.pop_front()),
                _ => return Ok(None),
            }
        }
    }
}

/// Whether a listed ETag differs from the one recorded (unknown on either side: no difference).
pub(crate) fn etags_differ(listed: &str, recorded: Option<&str>) -> bool {
    match (listed, recorded) {
        ("", _) | (_, None) => false,
        (listed, Some(recorded)) => !listed
            .trim_matches('"')
            .eq_ignore_ascii_case(recorded.trim_matches('"')),
    }
}
