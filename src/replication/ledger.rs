//! The ledger of a task: the source offsets it took up and has not accounted for yet (produced, skipped or lost),
//! and the acknowledgements that settle them into its position.
//!
//! Invariant: the position passes a produced record only once the target acknowledged it (under exactly-once, once
//! its transaction committed too), and never passes a record the target refused; acknowledgements must arrive in
//! send order with increasing target offsets, or accounting stops where the order last held.

use std::collections::VecDeque;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::replication::progress::Position;
use crate::replication::target::Ack;

/// A source offset a task took up and has not accounted for yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pending {
    /// The source offset (for a lost range, its last offset).
    pub(super) offset: i64,
    /// Under exactly-once, the transaction it was added to (0 otherwise).
    pub(super) epoch: u64,
    pub(super) timestamp_ms: Option<i64>,
    pub(super) bytes: usize,
    /// What becomes of it; only a produced record gets an acknowledgement.
    pub(super) fate: Fate,
}

/// What becomes of a source offset a task has taken up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fate {
    /// Produced to the target; settled by its acknowledgement.
    Produced,
    /// Not replicated because it came from the target (identity naming's loop guard).
    SkippedLoop,
    /// The end of the range `first..=offset` the source deleted before the task read it (retention overtook
    /// replication).
    Lost {
        /// The first offset lost.
        first: i64,
    },
    /// The end of the offsets a partition no longer had when ferry first read it: never ferry's to copy.
    BeforeFirstRead,
}

impl Pending {
    pub(super) fn produced(&self) -> bool {
        self.fate == Fate::Produced
    }
}

/// Why accounting stopped; the task ends with it, and the position stays before it.
#[derive(Debug)]
pub(super) enum Breach {
    /// The target refused the produced record at source offset `offset`, and the records behind it through
    /// `through` (the rest of its batch).
    Refused { offset: i64, through: i64, error: KafkaError },
    /// Acknowledgements broke the order the position relies on.
    Unordered(String),
}

/// Whether `error` only says librdkafka purged the record (its transaction aborted, or the member purged its
/// producer): the target did not refuse it.
fn is_purged(error: &KafkaError) -> bool {
    matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight))
}

/// The records a task took up and not yet accounted for, in source order, and the acknowledgements for them.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    /// Records not yet accounted for, in source order; the produced ones are acknowledged in this order.
    pending: VecDeque<Pending>,
    /// Produced records among `pending`.
    unacknowledged: usize,
    /// Bytes of the records in `pending`.
    pending_bytes: usize,
    /// Acknowledgements not yet accounted for, in send order: under exactly-once, those of records whose
    /// transaction has not committed yet.
    held: VecDeque<Ack>,
    /// The target offset of the last acknowledgement accounted for, to check the order the position relies on.
    last_target_offset: Option<i64>,
    /// Set once accounting stopped (a refusal, or acknowledgements out of order): nothing more moves the position.
    stopped: bool,
}

impl Ledger {
    /// Records taken up and not accounted for.
    pub(super) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Bytes of the records taken up and not accounted for.
    pub(super) fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Produced records not accounted for (acknowledged or not).
    pub(super) fn unacknowledged(&self) -> usize {
        self.unacknowledged
    }

    /// Produced records whose acknowledgement has not arrived yet.
    pub(super) fn in_flight(&self) -> usize {
        self.unacknowledged - self.held.len()
    }

    /// Whether accounting stopped at a refusal or a break of order.
    pub(super) fn stopped(&self) -> bool {
        self.stopped
    }

    /// The oldest record not accounted for.
    pub(super) fn front(&self) -> Option<&Pending> {
        self.pending.front()
    }

    /// The source offset to read next: after the last offset taken up (or, with nothing pending, `position`'s).
    pub(super) fn next_fetch(&self, position: &Position) -> i64 {
        self.pending.back().map_or(position.next_source_offset, |record| record.offset + 1)
    }

    /// Takes up a record, after everything taken up before it.
    pub(super) fn track(&mut self, record: Pending) {
        self.pending_bytes += record.bytes;
        self.unacknowledged += usize::from(record.produced());
        self.pending.push_back(record);
    }

    fn untrack_front(&mut self) -> Option<Pending> {
        let record = self.pending.pop_front()?;
        self.pending_bytes -= record.bytes;
        self.unacknowledged -= usize::from(record.produced());
        Some(record)
    }

    /// Acknowledgements that arrived, in send order.
    pub(super) fn receive(&mut self, acks: impl IntoIterator<Item = Ack>) {
        self.held.extend(acks);
    }

    /// Accounts into `position` for the records at the front whose acknowledgement arrived (and, with
    /// `committed_epoch` below `u64::MAX`, whose transaction committed), and for the skipped records behind them;
    /// each record accounted for is added to `settled`. A refusal, or acknowledgements out of order, stop
    /// accounting for good.
    pub(super) fn settle(
        &mut self,
        position: &mut Position,
        committed_epoch: u64,
        settled: &mut Vec<Pending>,
    ) -> Result<(), Breach> {
        if self.stopped {
            return Ok(());
        }
        loop {
            self.settle_front_skipped(position, committed_epoch, settled);
            // That left a produced record, or a record of an open transaction, at the front, if any.
            if self.pending.front().is_none_or(|record| !record.produced() || record.epoch > committed_epoch) {
                break;
            }
            let Some(ack) = self.held.front() else { break };
            let target_offset = match ack {
                Ok(target_offset) => *target_offset,
                Err(_) => return Err(self.refusal_at(0, position).expect("the front acknowledgement is a refusal")),
            };
            if let Some(last) = self.last_target_offset.filter(|last| *last >= target_offset) {
                let offset = self.pending.front().expect("a produced record is at the front").offset;
                return Err(self.unordered(format!(
                    "source offset {offset} was written at target offset {target_offset}, after {last}"
                )));
            }
            self.held.pop_front();
            let record = self.untrack_front().expect("a produced record is at the front");
            self.last_target_offset = Some(target_offset);
            position.acknowledged(record.offset, target_offset);
            settled.push(record);
        }
        if self.held.len() > self.unacknowledged {
            return Err(self.unordered("an acknowledgement arrived for no record in flight".to_owned()));
        }
        // A refusal inside an open transaction: the transaction cannot commit, and the record is named now.
        match self.first_refusal() {
            Some(index) => Err(self.refusal_at(index, position).expect("found as a refusal")),
            None => Ok(()),
        }
    }

    /// Accounts for the skipped records at the front only (under exactly-once, those of committed transactions):
    /// the source moved on without producing anything.
    pub(super) fn settle_skipped(&mut self, position: &mut Position, committed_epoch: u64, settled: &mut Vec<Pending>) {
        if !self.stopped {
            self.settle_front_skipped(position, committed_epoch, settled);
        }
    }

    /// Skipped records at the front are done (under exactly-once, once their transaction committed): nothing
    /// before them waits for an acknowledgement.
    fn settle_front_skipped(&mut self, position: &mut Position, committed_epoch: u64, settled: &mut Vec<Pending>) {
        while self.pending.front().is_some_and(|record| !record.produced() && record.epoch <= committed_epoch) {
            let record = self.untrack_front().expect("checked above");
            match record.fate {
                Fate::Lost { first } => position.lost(first, record.offset),
                Fate::SkippedLoop | Fate::BeforeFirstRead | Fate::Produced => position.skipped(record.offset),
            }
            settled.push(record);
        }
    }

    /// The index (among held acknowledgements) of the first refusal by the target. Records librdkafka purged
    /// because their transaction aborted were not refused by the target.
    fn first_refusal(&self) -> Option<usize> {
        self.held.iter().position(|ack| ack.as_ref().is_err_and(|error| !is_purged(error)))
    }

    /// The first refusal among the held acknowledgements, if any: what an aborted transaction is worth reporting as.
    pub(super) fn refusal(&mut self, position: &Position) -> Option<Breach> {
        let index = self.first_refusal()?;
        self.refusal_at(index, position)
    }

    /// The refusal held at `index`, with the refused records right behind it (the rest of its batch).
    fn refusal_at(&mut self, index: usize, position: &Position) -> Option<Breach> {
        let error = self.held.get(index)?.clone().err()?;
        self.stopped = true;
        let run = self.held.iter().skip(index).take_while(|ack| ack.as_ref().is_err_and(|e| !is_purged(e))).count();
        let mut produced = self.pending.iter().filter(|record| record.produced()).map(|record| record.offset);
        let offset = produced.clone().nth(index).unwrap_or_else(|| self.next_fetch(position));
        // A purged record at `index` (not refused) makes a run of none: it names itself.
        let through = run.checked_sub(1).and_then(|last| produced.nth(index + last)).unwrap_or(offset);
        Some(Breach::Refused { offset, through: through.max(offset), error })
    }

    fn unordered(&mut self, detail: String) -> Breach {
        self.stopped = true;
        Breach::Unordered(detail)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use proptest::prelude::*;
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};

    use super::*;

    /// What a task and its producer do, in one random interleaving.
    #[derive(Debug, Clone)]
    enum Step {
        /// Take up the next record, `gap` offsets after the last (a compacted source has gaps).
        Take { gap: i64, fate: TakenAs },
        /// The producer reports on the oldest `count` records in flight.
        Report { count: usize, outcome: Outcome },
        /// Exactly-once: the open transaction commits and the next one opens.
        Commit,
        /// An acknowledgement for no record sent, or one at a target offset not after the last.
        Stray { backwards: bool },
        /// The task accounts for what arrived.
        Settle,
    }

    #[derive(Debug, Clone, Copy)]
    enum TakenAs {
        Produced,
        SkippedLoop,
        Lost { len: i64 },
    }

    #[derive(Debug, Clone, Copy)]
    enum Outcome {
        /// Written, at target offsets after a gap of `gap` (transaction markers).
        Acknowledged { gap: i64 },
        /// The `at`th of them is refused by the target (a record too large), the rest acknowledged.
        RefusedAt { at: usize },
        /// librdkafka purged them.
        Purged,
    }

    fn step() -> impl Strategy<Value = Step> {
        let taken = prop_oneof![
            6 => Just(TakenAs::Produced),
            1 => Just(TakenAs::SkippedLoop),
            1 => (1i64..50).prop_map(|len| TakenAs::Lost { len }),
        ];
        let outcome = prop_oneof![
            12 => (0i64..3).prop_map(|gap| Outcome::Acknowledged { gap }),
            1 => (0usize..4).prop_map(|at| Outcome::RefusedAt { at }),
            1 => Just(Outcome::Purged),
        ];
        prop_oneof![
            8 => (0i64..4, taken).prop_map(|(gap, fate)| Step::Take { gap, fate }),
            6 => (1usize..6, outcome).prop_map(|(count, outcome)| Step::Report { count, outcome }),
            2 => Just(Step::Commit),
            1 => any::<bool>().prop_map(|backwards| Step::Stray { backwards }),
            6 => Just(Step::Settle),
        ]
    }

    /// What really happened to a record, as the producer and the transaction coordinator know it.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Truth {
        InFlight,
        Written { target: i64 },
        NotWritten,
    }

    struct Model {
        exactly_once: bool,
        ledger: Ledger,
        position: Position,
        settled: Vec<Pending>,
        /// Every offset taken up: its fate, epoch and what became of it.
        taken: Vec<(Pending, Truth)>,
        in_flight: VecDeque<usize>,
        next_target: i64,
        epoch: u64,
        committed: u64,
        /// Set once accounting reported a breach: the task ends, nothing more is settled.
        breached: Option<Breach>,
    }

    impl Model {
        fn new(exactly_once: bool, start: i64) -> Self {
            Self {
                exactly_once,
                ledger: Ledger::default(),
                position: Position::starting_at(start),
                settled: Vec::new(),
                taken: Vec::new(),
                in_flight: VecDeque::new(),
                next_target: 1_000,
                epoch: u64::from(exactly_once),
                committed: 0,
                breached: None,
            }
        }

        fn committed_epoch(&self) -> u64 {
            if self.exactly_once {
                self.committed
            } else {
                u64::MAX
            }
        }

        fn apply(&mut self, step: &Step) {
            match *step {
                Step::Take { gap, fate } => {
                    let first = self.ledger.next_fetch(&self.position) + gap;
                    let (offset, fate) = match fate {
                        TakenAs::Produced => (first, Fate::Produced),
                        TakenAs::SkippedLoop => (first, Fate::SkippedLoop),
                        TakenAs::Lost { len } => (first + len - 1, Fate::Lost { first }),
                    };
                    let record = Pending { offset, epoch: self.epoch, timestamp_ms: None, bytes: 10, fate };
                    self.ledger.track(record);
                    let truth = if record.produced() { Truth::InFlight } else { Truth::NotWritten };
                    self.taken.push((record, truth));
                    if record.produced() {
                        self.in_flight.push_back(self.taken.len() - 1);
                    }
                }
                Step::Report { count, outcome } => {
                    let mut acks = Vec::new();
                    for n in 0..count.min(self.in_flight.len()) {
                        let index = self.in_flight.pop_front().expect("counted");
                        let ack = match outcome {
                            Outcome::Purged => Err(KafkaError::MessageProduction(RDKafkaErrorCode::PurgeQueue)),
                            Outcome::RefusedAt { at } if at == n => {
                                Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge))
                            }
                            Outcome::Acknowledged { gap } => {
                                self.next_target += if n == 0 { gap } else { 0 };
                                Ok(self.next_target)
                            }
                            Outcome::RefusedAt { .. } => Ok(self.next_target),
                        };
                        self.taken[index].1 = match &ack {
                            Ok(target) => {
                                self.next_target = target + 1;
                                Truth::Written { target: *target }
                            }
                            Err(_) => Truth::NotWritten,
                        };
                        acks.push(ack);
                    }
                    self.ledger.receive(acks);
                }
                Step::Commit if self.exactly_once => {
                    self.committed = self.epoch;
                    self.epoch += 1;
                }
                Step::Commit => {}
                Step::Stray { backwards: true } => {
                    // The oldest record in flight reported at the target offset of the last record written: the
                    // order the position relies on is broken, and the record is not where the report says.
                    let last_written = self.taken.iter().rev().find_map(|(_, truth)| match truth {
                        Truth::Written { target } => Some(*target),
                        _ => None,
                    });
                    if let Some(target) = last_written {
                        if let Some(index) = self.in_flight.pop_front() {
                            self.taken[index].1 = Truth::NotWritten;
                            self.ledger.receive([Ok(target)]);
                        }
                    }
                }
                Step::Stray { backwards: false } => {
                    // An acknowledgement with nothing in flight; the task sees it before it sends again.
                    if self.in_flight.is_empty() {
                        self.ledger.receive([Ok(self.next_target)]);
                        self.settle();
                    }
                }
                Step::Settle => self.settle(),
            }
        }

        fn settle(&mut self) {
            if self.breached.is_some() {
                return;
            }
            let before = self.position.next_source_offset;
            let committed = self.committed_epoch();
            let result = self.ledger.settle(&mut self.position, committed, &mut self.settled);
            assert!(self.position.next_source_offset >= before, "the position moved backwards");
            self.check_position();
            if let Err(breach) = result {
                if let Breach::Refused { offset, through, .. } = &breach {
                    assert!(self.position.next_source_offset <= *offset, "the position passed a refused record");
                    assert!(through >= offset);
                    let refused = self.taken.iter().find(|(record, _)| record.offset == *offset);
                    assert!(
                        refused.is_some_and(|(record, truth)| record.produced() && *truth == Truth::NotWritten),
                        "the breach names {offset}, which the target did not refuse: {:?}",
                        refused
                    );
                }
                self.breached = Some(breach);
            }
        }

        /// The position covers only what is on the target for good: every produced record before it was written
        /// (under exactly-once, committed), every offset before it was taken up, and the target offset after it
        /// follows the last record written.
        fn check_position(&self) {
            let next = self.position.next_source_offset;
            for (record, truth) in self.taken.iter().filter(|(record, _)| record.offset < next) {
                if self.exactly_once {
                    assert!(record.epoch <= self.committed, "position {next} passed {record:?} of an open transaction");
                }
                if record.produced() {
                    assert!(
                        matches!(truth, Truth::Written { .. }),
                        "position {next} passed {record:?}, which the target holds as {truth:?}"
                    );
                }
            }
            let last_written = self
                .taken
                .iter()
                .filter(|(record, _)| record.offset < next)
                .filter_map(|(_, truth)| match truth {
                    Truth::Written { target } => Some(*target),
                    _ => None,
                })
                .max();
            assert_eq!(self.position.next_target_offset, last_written.map(|target| target + 1));
            for point in &self.position.sync_points {
                assert!(
                    self.taken.iter().any(|(record, truth)| record.offset == point.source
                        && *truth == Truth::Written { target: point.target }),
                    "sync point {point:?} is not a record the target acknowledged there"
                );
            }
        }

        /// Everything in flight acknowledged and committed: without a breach, the position reaches every offset
        /// taken up.
        fn finish(&mut self) {
            self.apply(&Step::Report { count: usize::MAX, outcome: Outcome::Acknowledged { gap: 0 } });
            self.apply(&Step::Commit);
            self.settle();
            if self.breached.is_none() {
                assert_eq!(self.position.next_source_offset, self.ledger.next_fetch(&self.position));
                assert_eq!(self.ledger.pending_len(), 0);
                assert_eq!(self.ledger.pending_bytes(), 0);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn the_position_never_passes_what_the_target_has_not_acknowledged(
            exactly_once in any::<bool>(),
            start in 0i64..1_000,
            steps in proptest::collection::vec(step(), 0..120),
        ) {
            let mut model = Model::new(exactly_once, start);
            for step in &steps {
                model.apply(step);
            }
            model.finish();
        }
    }

    #[test]
    fn a_refusal_names_the_refused_records_of_its_batch() {
        let mut ledger = Ledger::default();
        let mut position = Position::starting_at(10);
        for offset in [10, 11, 13, 14] {
            ledger.track(Pending { offset, epoch: 0, timestamp_ms: None, bytes: 1, fate: Fate::Produced });
        }
        let too_large = || Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge));
        ledger.receive([Ok(100), too_large(), too_large(), Ok(101)]);
        let breach = ledger.settle(&mut position, u64::MAX, &mut Vec::new()).unwrap_err();
        assert!(matches!(breach, Breach::Refused { offset: 11, through: 13, .. }), "{breach:?}");
        assert_eq!(position.next_source_offset, 11);
        assert!(ledger.stopped());
        ledger.receive([Ok(102)]);
        ledger.settle(&mut position, u64::MAX, &mut Vec::new()).unwrap();
        assert_eq!(position.next_source_offset, 11, "nothing moves the position after a refusal");
    }
}
