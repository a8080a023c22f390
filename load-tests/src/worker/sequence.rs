//! The sequence checker: what one checking subscriber makes of each body it
//! gets, and its tally when a step is collected. No I/O, no atomics: the
//! subscriber's reading task owns one `SequenceTracker` (behind a mutex the
//! collecting task also takes) and turns each `Verdict` into counters.

use crate::frames::Stamp;
use crate::wire::Tally;

/// Sequence numbers from this one up are not tracked (bounds a subscriber's
/// bitmap to 8 MiB); such messages are `Verdict::Untracked`.
pub const MAX_TRACKED_SEQ: u64 = 1 << 26;

/// What one message is to the subscriber that got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Its first arrival, and no higher sequence number came before it.
    New,
    /// Its first arrival, after a higher sequence number.
    Reordered,
    /// Already seen in this step.
    Duplicate,
    /// Published to another destination than the subscriber's.
    Misrouted,
    /// From a step that has already been collected.
    Stale,
    /// A sequence number of `MAX_TRACKED_SEQ` or more.
    Untracked,
}

impl Verdict {
    /// Whether the message counts as delivered (and its latency is recorded).
    pub fn is_first_arrival(self) -> bool {
        matches!(self, Verdict::New | Verdict::Reordered)
    }
}

/// One subscriber's view of the current step: a bitmap of the sequence
/// numbers seen, and counts of what was wrong.
#[derive(Debug, Default)]
pub struct SequenceTracker {
    step: u32,
    /// Bit `seq % 64` of word `seq / 64`: sequence number `seq` arrived.
    seen: Vec<u64>,
    distinct: u64,
    /// One past the highest sequence number seen.
    high: u64,
    duplicated: u64,
    reordered: u64,
    misrouted: u64,
}

impl SequenceTracker {
    /// Judges one message that arrived on a subscription to destination
    /// `own_dest`, and remembers it.
    #[inline]
    pub fn check(&mut self, own_dest: u32, stamp: &Stamp) -> Verdict {
        if stamp.dest != own_dest {
            self.misrouted += 1;
            return Verdict::Misrouted;
        }
        if stamp.step != self.step {
            if stamp.step < self.step {
                return Verdict::Stale;
            }
            // A later step before this one was collected: start over.
            *self = SequenceTracker {
                step: stamp.step,
                ..Default::default()
            };
        }
        if stamp.seq >= MAX_TRACKED_SEQ {
            return Verdict::Untracked;
        }
        let (word, bit) = ((stamp.seq / 64) as usize, 1u64 << (stamp.seq % 64));
        if word >= self.seen.len() {
            self.seen.resize((word + 1).max(self.seen.len() * 2), 0);
        }
        if self.seen[word] & bit != 0 {
            self.duplicated += 1;
            return Verdict::Duplicate;
        }
        self.seen[word] |= bit;
        self.distinct += 1;
        if stamp.seq + 1 < self.high {
            self.reordered += 1;
            Verdict::Reordered
        } else {
            self.high = stamp.seq + 1;
            Verdict::New
        }
    }

    /// Ends `step`, of which `expected` messages were published to this
    /// subscriber's destination: returns the tally and starts on the next
    /// step (keeping the bitmap's memory).
    pub fn finish_step(&mut self, step: u32, expected: u64) -> Tally {
        let tally = Tally {
            expected,
            received: self.distinct,
            lost: expected.saturating_sub(self.distinct),
            duplicated: self.duplicated,
            reordered: self.reordered,
            misrouted: self.misrouted,
        };
        let mut seen = std::mem::take(&mut self.seen);
        seen.iter_mut().for_each(|word| *word = 0);
        *self = SequenceTracker {
            step: step + 1,
            seen,
            ..Default::default()
        };
        tally
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEST: u32 = 2;

    fn stamp(step: u32, dest: u32, seq: u64) -> Stamp {
        Stamp {
            step,
            dest,
            seq,
            sent_ns: 0,
        }
    }

    /// Feeds the sequence numbers of step 0 on `DEST`; returns the verdicts.
    fn feed(tracker: &mut SequenceTracker, seqs: &[u64]) -> Vec<Verdict> {
        seqs.iter()
            .map(|&seq| tracker.check(DEST, &stamp(0, DEST, seq)))
            .collect()
    }

    #[test]
    fn everything_in_order_is_new_and_nothing_is_lost() {
        let mut tracker = SequenceTracker::default();
        let verdicts = feed(&mut tracker, &[0, 1, 2, 3, 4]);
        assert!(verdicts.iter().all(|v| *v == Verdict::New), "{verdicts:?}");
        let tally = tracker.finish_step(0, 5);
        assert_eq!(
            tally,
            Tally {
                expected: 5,
                received: 5,
                ..Tally::default()
            }
        );
    }

    #[test]
    fn a_missing_number_is_lost() {
        let mut tracker = SequenceTracker::default();
        feed(&mut tracker, &[0, 1, 3]);
        let tally = tracker.finish_step(0, 5);
        assert_eq!((tally.received, tally.lost), (3, 2), "{tally:?}");
        assert_eq!(tally.reordered, 0);
    }

    #[test]
    fn a_second_arrival_is_a_duplicate_and_not_received_twice() {
        let mut tracker = SequenceTracker::default();
        let verdicts = feed(&mut tracker, &[0, 1, 1, 2]);
        assert_eq!(verdicts[2], Verdict::Duplicate);
        assert!(!Verdict::Duplicate.is_first_arrival());
        let tally = tracker.finish_step(0, 3);
        assert_eq!((tally.received, tally.duplicated, tally.lost), (3, 1, 0));
    }

    #[test]
    fn a_number_below_the_highest_seen_is_reordered_but_delivered() {
        let mut tracker = SequenceTracker::default();
        let verdicts = feed(&mut tracker, &[0, 2, 1, 3]);
        assert_eq!(
            verdicts,
            [Verdict::New, Verdict::New, Verdict::Reordered, Verdict::New]
        );
        assert!(Verdict::Reordered.is_first_arrival());
        let tally = tracker.finish_step(0, 4);
        assert_eq!((tally.received, tally.reordered, tally.lost), (4, 1, 0));
    }

    #[test]
    fn another_destination_is_misrouted_and_does_not_count_as_received() {
        let mut tracker = SequenceTracker::default();
        assert_eq!(
            tracker.check(DEST, &stamp(0, DEST + 1, 0)),
            Verdict::Misrouted
        );
        // The misrouted message does not mark seq 0 as seen.
        assert_eq!(tracker.check(DEST, &stamp(0, DEST, 0)), Verdict::New);
        let tally = tracker.finish_step(0, 1);
        assert_eq!((tally.received, tally.misrouted, tally.lost), (1, 1, 0));
    }

    #[test]
    fn a_collected_step_is_stale_and_the_next_step_starts_clean() {
        let mut tracker = SequenceTracker::default();
        feed(&mut tracker, &[0, 1, 2]);
        tracker.finish_step(0, 3);
        assert_eq!(tracker.check(DEST, &stamp(0, DEST, 1)), Verdict::Stale);
        // Step 1 reuses the numbers of step 0: new again, not duplicates.
        for seq in 0..3 {
            assert_eq!(tracker.check(DEST, &stamp(1, DEST, seq)), Verdict::New);
        }
        let tally = tracker.finish_step(1, 4);
        assert_eq!(
            tally,
            Tally {
                expected: 4,
                received: 3,
                lost: 1,
                ..Tally::default()
            }
        );
    }

    #[test]
    fn a_later_step_before_collection_starts_over() {
        let mut tracker = SequenceTracker::default();
        feed(&mut tracker, &[0, 1, 1]);
        assert_eq!(tracker.check(DEST, &stamp(1, DEST, 1)), Verdict::New);
        let tally = tracker.finish_step(1, 1);
        assert_eq!((tally.received, tally.duplicated), (1, 0), "{tally:?}");
    }

    #[test]
    fn numbers_past_the_bound_are_untracked() {
        let mut tracker = SequenceTracker::default();
        let verdicts = feed(&mut tracker, &[MAX_TRACKED_SEQ - 1, MAX_TRACKED_SEQ]);
        assert_eq!(verdicts, [Verdict::New, Verdict::Untracked]);
        assert_eq!(tracker.finish_step(0, 1).received, 1);
    }
}
