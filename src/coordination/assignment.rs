//! Which member runs which task: a pure function of (wanted tasks, live members, previous assignment).
//!
//! Invariant: every wanted task is on exactly one live member, every live member runs `floor(n/m)` or `ceil(n/m)`
//! tasks, and no balanced assignment keeps more tasks on their previous member. Only moved tasks stop and start, so
//! a join or leave never turns into a stop-the-world rebalance. Re-running it on its own output changes nothing,
//! which lets the controller reconcile on every change and on a timer.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::replication::progress::TaskId;

/// A member's identity (its registration key under `/<prefix>/members/`).
pub type MemberId = String;

/// Which tasks each member runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    /// Tasks per member; a member with no tasks is listed with an empty set.
    pub by_member: BTreeMap<MemberId, BTreeSet<TaskId>>,
}

impl Assignment {
    /// The member running `task`; if a hand-built assignment lists it twice, the first member by id.
    pub fn member_of(&self, task: &TaskId) -> Option<&MemberId> {
        self.by_member.iter().find(|(_, tasks)| tasks.contains(task)).map(|(member, _)| member)
    }

    /// How many tasks are assigned, over all members.
    pub fn task_count(&self) -> usize {
        self.by_member.values().map(BTreeSet::len).sum()
    }

    /// How many tasks each member runs, including members with none.
    pub fn counts(&self) -> BTreeMap<MemberId, usize> {
        self.by_member.iter().map(|(member, tasks)| (member.clone(), tasks.len())).collect()
    }

    /// Each task's member, first member by id winning, as `member_of` answers.
    fn owners(&self) -> HashMap<&TaskId, &MemberId> {
        let mut owners = HashMap::with_capacity(self.task_count());
        for (member, tasks) in &self.by_member {
            for task in tasks {
                owners.entry(task).or_insert(member);
            }
        }
        owners
    }
}

/// Assigns every task in `tasks` to one of `members`, balanced, moving as few tasks from `previous` as possible.
pub fn assign(tasks: &BTreeSet<TaskId>, members: &BTreeSet<MemberId>, previous: &Assignment) -> Assignment {
    if members.is_empty() {
        return Assignment::default();
    }
    // Work on indices into the sorted tasks and members: with 100,000 tasks, hashing or re-inserting TaskIds (two
    // strings each) one at a time dominated the run time.
    let wanted: Vec<&TaskId> = tasks.iter().collect();
    let live: Vec<&MemberId> = members.iter().collect();

    // What each live member could keep, ascending. A task listed under several members (never produced here) is
    // claimed by the first live one by id, so it cannot end up assigned twice.
    let mut owner: Vec<Option<usize>> = vec![None; wanted.len()];
    let mut keepable: Vec<Vec<usize>> = vec![Vec::new(); live.len()];
    for (m, member) in live.iter().enumerate() {
        let Some(owned) = previous.by_member.get(*member) else { continue };
        // Both sides are sorted, so each search starts where the previous one ended.
        let mut from = 0;
        for task in owned {
            match gallop(&wanted[from..], task) {
                Ok(found) => {
                    let t = from + found;
                    if owner[t].is_none() {
                        owner[t] = Some(m);
                        keepable[m].push(t);
                    }
                    from = t + 1;
                }
                Err(insert_at) => from += insert_at,
            }
        }
    }

    // The n % m ceil quotas go to the members that can keep the most: a ceil quota saves a move exactly when its
    // member has more than floor(n/m) keepable tasks, so this maximises what stays put. Ties by member id.
    let (base, extra) = (wanted.len() / live.len(), wanted.len() % live.len());
    let mut ranked: Vec<usize> = (0..live.len()).collect();
    ranked.sort_by(|&a, &b| keepable[b].len().cmp(&keepable[a].len()).then(a.cmp(&b)));
    let mut quota = vec![base; live.len()];
    for &m in ranked.iter().take(extra) {
        quota[m] = base + 1;
    }

    // Over-quota members give up their highest TaskIds, so the outcome does not depend on iteration accidents.
    let mut rooms: Vec<(usize, usize)> = Vec::with_capacity(live.len());
    for (m, list) in keepable.iter_mut().enumerate() {
        for &t in list.iter().skip(quota[m]) {
            owner[t] = None;
        }
        list.truncate(quota[m]);
        if quota[m] > list.len() {
            rooms.push((m, quota[m] - list.len()));
        }
    }

    // Hand out the rest in TaskId order, one per member per round, so a new topic's partitions spread over the
    // members instead of filling one; members with the most room go first in each round.
    rooms.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut pool = owner.iter_mut().filter(|slot| slot.is_none());
    // The rooms add up to exactly the number of unkept tasks, so both run out together.
    'rounds: while !rooms.is_empty() {
        for (m, room) in &mut rooms {
            let Some(slot) = pool.next() else { break 'rounds };
            *slot = Some(*m);
            *room -= 1;
        }
        rooms.retain(|(_, room)| *room > 0);
    }
    debug_assert!(owner.iter().all(Option::is_some), "every wanted task has a member");

    // One pass in TaskId order leaves each member's list sorted, which BTreeSet builds from in linear time.
    let mut lists: Vec<Vec<TaskId>> = quota.iter().map(|&q| Vec::with_capacity(q)).collect();
    for (task, m) in wanted.iter().zip(&owner) {
        if let Some(list) = m.and_then(|m| lists.get_mut(m)) {
            list.push((*task).clone());
        }
    }
    let by_member =
        live.into_iter().cloned().zip(lists).map(|(member, list)| (member, list.into_iter().collect())).collect();
    Assignment { by_member }
}

/// Like [`assign`], but the tasks of one unit (an exactly-once bucket: `unit_of` gives its number) go to one member
/// together, so a bucket's transactional producer runs on one member and its new owner fences the old. Tasks with no
/// unit are assigned one by one. Balance and stickiness count units.
pub fn assign_grouped(
    tasks: &BTreeSet<TaskId>,
    members: &BTreeSet<MemberId>,
    previous: &Assignment,
    unit_of: impl Fn(&TaskId) -> Option<u32>,
) -> Assignment {
    // A unit stands in as a task of its flow with an empty topic name, which no Kafka topic can have.
    let unit_key = |task: &TaskId| match unit_of(task) {
        Some(unit) => TaskId { flow: task.flow.clone(), topic: "".into(), partition: unit as i32 },
        None => task.clone(),
    };
    let mut units: BTreeMap<TaskId, Vec<TaskId>> = BTreeMap::new();
    for task in tasks {
        units.entry(unit_key(task)).or_default().push(task.clone());
    }
    let mut held = Assignment::default();
    for (member, owned) in &previous.by_member {
        held.by_member.insert(member.clone(), owned.iter().map(unit_key).collect());
    }
    let keys: BTreeSet<TaskId> = units.keys().cloned().collect();
    let by_unit = assign(&keys, members, &held);
    let by_member = by_unit
        .by_member
        .into_iter()
        .map(|(member, keys)| (member, keys.iter().flat_map(|key| units[key].iter().cloned()).collect()))
        .collect();
    Assignment { by_member }
}

/// Like `binary_search`, but cheap when `task` is near the front, as a member's next task usually is: a previous
/// balanced assignment puts about one of a member's tasks in every `m`, and TaskId comparisons (two strings) are what
/// this function spends its time on.
fn gallop(sorted: &[&TaskId], task: &TaskId) -> Result<usize, usize> {
    let mut bound = 1;
    while bound < sorted.len() && sorted[bound - 1] < task {
        bound *= 2;
    }
    // Everything before `bound / 2` is less than `task` (checked above); `sorted[bound - 1]`, if it exists, is not.
    let end = bound.min(sorted.len());
    let start = (bound / 2).min(end);
    sorted[start..end].binary_search(&task).map(|i| start + i).map_err(|i| start + i)
}

/// Tasks present in both assignments whose member differs.
pub fn moved(previous: &Assignment, next: &Assignment) -> usize {
    let before = previous.owners();
    next.owners().into_iter().filter(|(task, member)| before.get(task).is_some_and(|was| was != member)).count()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn member(i: u8) -> MemberId {
        format!("m{i:02}")
    }

    fn members(ids: impl IntoIterator<Item = u8>) -> BTreeSet<MemberId> {
        ids.into_iter().map(member).collect()
    }

    fn topic(flow: &str, topic: &str, partitions: i32) -> BTreeSet<TaskId> {
        (0..partitions).map(|p| TaskId::new(flow, topic, p)).collect()
    }

    /// Panics unless every wanted task is on exactly one live member and every live member is listed.
    fn check_complete_and_balanced(tasks: &BTreeSet<TaskId>, live: &BTreeSet<MemberId>, next: &Assignment) {
        assert_eq!(next.by_member.keys().cloned().collect::<BTreeSet<_>>(), *live);
        assert_eq!(next.task_count(), tasks.len());
        let union: BTreeSet<TaskId> = next.by_member.values().flatten().cloned().collect();
        assert_eq!(union, *tasks);
        let (min, max) = next.counts().values().fold((usize::MAX, 0), |(lo, hi), &c| (lo.min(c), hi.max(c)));
        assert!(max - min <= 1, "unbalanced: {:?}", next.counts());
    }

    #[test]
    fn grouped_tasks_stay_together_and_move_together() {
        let mut tasks = topic("eos", "a", 12);
        tasks.extend(topic("alo", "b", 4));
        let unit_of = |task: &TaskId| (&*task.flow == "eos").then_some(task.partition as u32 % 4);
        let owner_of_unit = |assignment: &Assignment, unit: u32| -> BTreeSet<MemberId> {
            (0..12)
                .filter(|p| *p as u32 % 4 == unit)
                .filter_map(|p| assignment.member_of(&TaskId::new("eos", "a", p)).cloned())
                .collect()
        };
        let first = assign_grouped(&tasks, &members([1, 2, 3]), &Assignment::default(), unit_of);
        assert_eq!(first.task_count(), tasks.len());
        for unit in 0..4 {
            assert_eq!(owner_of_unit(&first, unit).len(), 1, "bucket {unit} split: {first:?}");
        }
        // A member leaves: its buckets move as wholes; the others stay where they were.
        let second = assign_grouped(&tasks, &members([1, 2]), &first, unit_of);
        for unit in 0..4 {
            let owner = owner_of_unit(&second, unit);
            assert_eq!(owner.len(), 1, "bucket {unit} split: {second:?}");
            let before = owner_of_unit(&first, unit);
            if before != members([3]) {
                assert_eq!(owner, before, "bucket {unit} moved without need");
            }
        }
        assert_eq!(second, assign_grouped(&tasks, &members([1, 2]), &second, unit_of), "stable on its own output");
    }

    #[test]
    fn no_members_give_an_empty_assignment() {
        let previous = assign(&topic("f", "a", 4), &members([1]), &Assignment::default());
        assert_eq!(assign(&topic("f", "a", 4), &BTreeSet::new(), &previous), Assignment::default());
    }

    #[test]
    fn no_tasks_still_list_every_member() {
        let next = assign(&BTreeSet::new(), &members([1, 2]), &Assignment::default());
        assert_eq!(next.counts(), BTreeMap::from([(member(1), 0), (member(2), 0)]));
    }

    #[test]
    fn a_new_topic_is_spread_round_robin() {
        let next = assign(&topic("f", "a", 6), &members([1, 2, 3]), &Assignment::default());
        let partitions = |m: u8| next.by_member[&member(m)].iter().map(|t| t.partition).collect::<Vec<_>>();
        assert_eq!((partitions(1), partitions(2), partitions(3)), (vec![0, 3], vec![1, 4], vec![2, 5]));
    }

    #[test]
    fn an_overloaded_member_gives_up_its_highest_tasks() {
        let tasks = topic("f", "a", 4);
        let previous = Assignment { by_member: BTreeMap::from([(member(1), tasks.clone())]) };
        let next = assign(&tasks, &members([1, 2]), &previous);
        assert_eq!(next.by_member[&member(1)], topic("f", "a", 2));
        assert_eq!(moved(&previous, &next), 2);
    }

    #[test]
    fn ceil_quotas_go_to_members_that_can_keep_more() {
        // 5 tasks over 2 members: m02 had 3, so it keeps the ceil quota although m01 sorts first.
        let tasks = topic("f", "a", 5);
        let previous = Assignment {
            by_member: BTreeMap::from([
                (member(1), tasks.iter().take(2).cloned().collect()),
                (member(2), tasks.iter().skip(2).cloned().collect()),
            ]),
        };
        let next = assign(&tasks, &members([1, 2]), &previous);
        assert_eq!(next, previous);
    }

    #[test]
    fn a_task_listed_twice_is_assigned_once() {
        let tasks = topic("f", "a", 2);
        let previous =
            Assignment { by_member: BTreeMap::from([(member(1), tasks.clone()), (member(2), tasks.clone())]) };
        let next = assign(&tasks, &members([1, 2]), &previous);
        check_complete_and_balanced(&tasks, &members([1, 2]), &next);
        assert_eq!(previous.member_of(&TaskId::new("f", "a", 0)), Some(&member(1)));
    }

    #[test]
    fn a_hundred_thousand_tasks_rebalance_onto_an_eighth_member() {
        let tasks: BTreeSet<TaskId> =
            (0..100).flat_map(|t| (0..1000).map(move |p| TaskId::new("f", &format!("topic-{t:03}"), p))).collect();
        let seven = members(1..=7);
        let first = assign(&tasks, &seven, &Assignment::default());
        check_complete_and_balanced(&tasks, &seven, &first);
        let eight = members(1..=8);
        let second = assign(&tasks, &eight, &first);
        check_complete_and_balanced(&tasks, &eight, &second);
        assert_eq!(moved(&first, &second), 100_000 / 8, "only the newcomer's share moves");
    }

    /// Wanted tasks, live members, and a previous assignment that may be unbalanced, name departed members and
    /// list tasks no longer wanted (and, with `duplicates`, list a task under two members).
    #[derive(Debug, Clone)]
    struct Scenario {
        tasks: BTreeSet<TaskId>,
        members: BTreeSet<MemberId>,
        previous: Assignment,
    }

    fn scenario(duplicates: bool) -> impl Strategy<Value = Scenario> {
        // Plain integer ranges: nested collection/option strategies over 2,000 elements made generation ~15x slower.
        // Per entry: a slot among 2 flows x 3 topics x 400 partitions; wanted unless `wanted >= 85` (15%);
        // `owner` 0..16 is that member, 16..32 one of m00..m02 (so previous assignments are often far from
        // balanced), 32..40 none; `second` < 16 lists the task under a second member too (about 5%).
        // Ids go up to m15 while at most 12 are live, so some owners have departed.
        let entries = prop::collection::vec((0..2400u32, 0..100u8, 0..40u8, 0..320u16), 0..2000);
        (entries, prop::collection::btree_set(0..16u8, 1..=12)).prop_map(move |(entries, live)| {
            let mut seen = BTreeSet::new();
            let mut tasks = BTreeSet::new();
            let mut previous = Assignment::default();
            for (slot, wanted, owner, second) in entries {
                if !seen.insert(slot) {
                    continue;
                }
                let partition = i32::try_from(slot % 400).unwrap_or_default();
                let task =
                    TaskId::new(&format!("flow-{}", slot / 1200), &format!("topic-{}", slot / 400 % 3), partition);
                let owner = match owner {
                    0..16 => Some(owner),
                    16..32 => Some(owner % 3),
                    _ => None,
                };
                let second = u8::try_from(second).ok().filter(|s| duplicates && *s < 16);
                for owner in owner.into_iter().chain(second) {
                    previous.by_member.entry(member(owner)).or_default().insert(task.clone());
                }
                if wanted < 85 {
                    tasks.insert(task);
                }
            }
            Scenario { tasks, members: members(live), previous }
        })
    }

    /// The most tasks any balanced assignment keeps on their previous member, by trying every choice of which
    /// members get the ceil quota. Needs a previous assignment listing each task at most once.
    fn most_kept_possible(tasks: &BTreeSet<TaskId>, live: &BTreeSet<MemberId>, previous: &Assignment) -> usize {
        let live: Vec<&MemberId> = live.iter().collect();
        let keepable: Vec<usize> = live
            .iter()
            .map(|m| previous.by_member.get(*m).map_or(0, |owned| owned.intersection(tasks).count()))
            .collect();
        let (base, extra) = (tasks.len() / live.len(), tasks.len() % live.len());
        (0u32..1 << live.len())
            .filter(|ceil| ceil.count_ones() as usize == extra)
            .map(|ceil| {
                let quota = |i: usize| base + usize::from((ceil & (1 << i)) != 0);
                keepable.iter().enumerate().map(|(i, &k)| k.min(quota(i))).sum::<usize>()
            })
            .max()
            .unwrap_or(0)
    }

    proptest! {
        #[test]
        fn every_wanted_task_is_on_exactly_one_live_member(s in scenario(true)) {
            let next = assign(&s.tasks, &s.members, &s.previous);
            prop_assert_eq!(next.by_member.keys().cloned().collect::<BTreeSet<_>>(), s.members.clone());
            let mut seen = BTreeSet::new();
            for task in next.by_member.values().flatten() {
                prop_assert!(seen.insert(task.clone()), "{} assigned twice", task);
            }
            prop_assert_eq!(seen, s.tasks);
        }

        #[test]
        fn members_differ_by_at_most_one_task(s in scenario(true)) {
            let counts = assign(&s.tasks, &s.members, &s.previous).counts();
            let (n, m) = (s.tasks.len(), s.members.len());
            for (member, count) in counts {
                prop_assert!(count == n / m || count == n.div_ceil(m), "{} runs {} of {} over {}", member, count, n, m);
            }
        }

        #[test]
        fn moves_the_fewest_tasks_balance_allows(s in scenario(false)) {
            let next = assign(&s.tasks, &s.members, &s.previous);
            let most_kept = most_kept_possible(&s.tasks, &s.members, &s.previous);
            // Each task is listed at most once in `previous` here, so counting per listing counts per task.
            let wanted_before = s.previous.by_member.values().flatten().filter(|t| s.tasks.contains(*t)).count();
            let on_live: usize = s.members
                .iter()
                .filter_map(|m| s.previous.by_member.get(m))
                .map(|owned| owned.intersection(&s.tasks).count())
                .sum();
            let kept: usize = s.previous.by_member
                .iter()
                .filter_map(|(m, owned)| Some(owned.intersection(next.by_member.get(m)?).count()))
                .sum();
            prop_assert_eq!(kept, most_kept);
            // `moved` also counts the tasks of departed members, which always move.
            prop_assert_eq!(moved(&s.previous, &next), (wanted_before - on_live) + (on_live - most_kept));
        }

        #[test]
        fn a_joining_member_takes_at_most_its_share(s in scenario(false)) {
            prop_assume!(s.members.len() < 16);
            let balanced = assign(&s.tasks, &s.members, &s.previous);
            let joined = (0..16).map(member).find(|m| !s.members.contains(m));
            prop_assume!(joined.is_some());
            let mut more = s.members.clone();
            more.extend(joined);
            let next = assign(&s.tasks, &more, &balanced);
            let bound = s.tasks.len().div_ceil(more.len());
            prop_assert!(moved(&balanced, &next) <= bound, "moved {} > {}", moved(&balanced, &next), bound);
        }

        #[test]
        fn a_leaving_member_moves_only_its_own_tasks(s in scenario(false), leaver in any::<prop::sample::Index>()) {
            prop_assume!(s.members.len() >= 2);
            let balanced = assign(&s.tasks, &s.members, &s.previous);
            let leaving = (*leaver.get(&s.members.iter().collect::<Vec<_>>())).clone();
            let mut fewer = s.members.clone();
            fewer.remove(&leaving);
            let next = assign(&s.tasks, &fewer, &balanced);
            prop_assert_eq!(moved(&balanced, &next), balanced.by_member[&leaving].len());
            for survivor in &fewer {
                let (before, after) = (&balanced.by_member[survivor], &next.by_member[survivor]);
                prop_assert!(before.is_subset(after), "{} lost a task", survivor);
            }
        }

        #[test]
        fn gallop_agrees_with_binary_search(
            partitions in prop::collection::btree_set(0..500i32, 0..200),
            probe in 0..520i32,
        ) {
            let tasks: Vec<TaskId> = partitions.iter().map(|&p| TaskId::new("f", "a", p)).collect();
            let sorted: Vec<&TaskId> = tasks.iter().collect();
            let task = TaskId::new("f", "a", probe);
            prop_assert_eq!(gallop(&sorted, &task), sorted.binary_search(&&task));
        }

        #[test]
        fn reassigning_its_own_output_changes_nothing(s in scenario(true)) {
            let once = assign(&s.tasks, &s.members, &s.previous);
            prop_assert_eq!(assign(&s.tasks, &s.members, &once), once);
        }
    }
}
