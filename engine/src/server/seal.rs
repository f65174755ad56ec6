//! Answers that carry a checksum of themselves, so that a client can tell an answer damaged
//! on the way (a flipped bit that still parses) from the one the server sent.

use super::wire::{BatchResponse, ChangesPage, ConflictsPage};
use crate::checksum::checksum_of_owned;
use serde::Serialize;

/// An answer with an optional `checksum` member over the rest of it.
pub trait Sealed: Serialize + Sized {
    /// The checksum member.
    fn checksum_mut(&mut self) -> &mut Option<String>;

    /// The checksum it claims, if any.
    fn claimed_checksum(&self) -> Option<&str>;

    /// The answer with its checksum set.
    fn sealed(mut self) -> Self {
        *self.checksum_mut() = None;
        let checksum = checksum_of_owned(serde_json::to_value(&self).expect("answers serialize"));
        *self.checksum_mut() = Some(checksum);
        self
    }

    /// Whether its content matches the checksum it claims (an answer that claims none, from
    /// a server that does not seal, passes).
    fn intact(&self) -> bool {
        self.claimed_checksum().is_none_or(|claimed| {
            checksum_of_owned(serde_json::to_value(self).expect("answers serialize")) == claimed
        })
    }
}

macro_rules! sealed {
    ($($answer:ty),*) => {$(
        impl Sealed for $answer {
            fn checksum_mut(&mut self) -> &mut Option<String> {
                &mut self.checksum
            }

            fn claimed_checksum(&self) -> Option<&str> {
                self.checksum.as_deref()
            }
        }
    )*};
}

sealed!(BatchResponse, ChangesPage, ConflictsPage);
