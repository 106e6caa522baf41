"""A randomized schedule search over the real Pipeline, OffsetTracker and Coalescer.

Hypothesis drives one member (tests/pipeline_rig.py: fake clock, a fake Target answered by the
rules) through assignments, revocations, lost partitions, partitions coming back, records read,
sends accepted, refused (the DLQ slow or not, the partition then revoked or not) or failing
with a bug, one by one or by a "mood" of Target that answers every send as it arrives, and
time passing. When a partition leaves, "another member" reads it from the group's commit and
writes every one of its events, in order, as the next owner does.

Hypothesis draws the first of a rule's choices far more often than the others, and a rule whose
precondition rarely holds (a send open) rarely runs: so each kind of answer is a rule of its
own, Target's mood answers many sends at once, and the choices that make things happen come
first. Checked by reverting each fix of docs/reliability.md "Defects found at the edges" in a
copy of the tree: the table there says which search catches which.

Invariants, after every step:
- commit never passes an unfinished event: every offset below what the tracker would commit
  (and below the group's commit) was written to Target, dead-lettered or handled by the other
  member;
- no stale overwrite in Target's history (tests/oracles.py);
and at the end, no stall: when the input stops and every send is answered, every event read
finishes and `buffered` returns to 0.

Each event sets one of the profile's shared attributes (`v` or `w`, suffixed with its partition)
to a value of its own, plus an attribute named after its position, so each accepted request says
which events it carried (and a stale `v` can ride in a request for a newer `w`, as in
production). One profile gets events from both partitions (as when events are not keyed by
profile): a batch mixing a revoked partition's event with an owned one's would carry a stale
value. Its attributes are per partition, since Kafka orders nothing across partitions.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.oracles import assert_no_stale_overwrite, assert_regressions_corrected
from tests.pipeline_rig import TOPIC, Rig

pytestmark = pytest.mark.unit

PARTITIONS = (0, 1)
# Most profiles' events go to one partition, as a keyed producer does; "s" is fed by both.
SHARED = ("mbox3rdPartyId", "s")
PROFILES = {
    0: [("mbox3rdPartyId", "a"), ("mbox3rdPartyId", "b"), SHARED],
    1: [("mboxPC", "c-1"), SHARED],
}
WHICH = st.integers(0, 2)  # a profile of the partition (modulo its count)


def pick(items: list[Any], index: int) -> Any:
    return items[index % len(items)]


def marker(partition: int, offset: int) -> str:
    return f"e{partition}_{offset}"


class Schedules(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.rig = self.build_rig()
        self.run(self.rig.__aenter__())
        # The partitions' logs: (profile, attributes) per offset, and the group's commit.
        self.logs: dict[int, list[tuple[tuple[str, str], dict[str, str]]]] = {
            p: [] for p in PARTITIONS
        }
        self.committed = dict.fromkeys(PARTITIONS, 0)
        self.done: set[tuple[int, int]] = set()  # (partition, offset) finished by anyone
        self.owned: set[int] = set()

    def build_rig(self) -> Rig:
        return Rig(window=1.0, max_in_flight=2)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        try:
            self.quiesce()
        finally:
            self.run(self.close())
            self.loop.close()

    async def close(self) -> None:
        await self.rig.__aexit__(None, None, None)

    # --- the group ------------------------------------------------------------------------

    def unowned(self) -> list[int]:
        return [p for p in PARTITIONS if p not in self.owned]

    # Preconditions keep every step meaningful: a step that does nothing wastes the search.
    @precondition(lambda self: self.unowned())
    @rule(index=st.integers(0, 1))
    def assign(self, index: int) -> None:
        partition = pick(self.unowned(), index)
        self.owned.add(partition)
        self.rig.assign(partition, at={partition: self.committed[partition]})

    @precondition(lambda self: self.owned)
    @rule(
        index=st.integers(0, 1),
        lost=st.booleans(),
        back=st.booleans(),
        newer=st.lists(st.tuples(WHICH, st.sampled_from("vw")), max_size=2),
    )
    def leave(self, index: int, lost: bool, back: bool, newer: list[tuple[int, str]]) -> None:
        """The partition is revoked (or lost); with `back`, its next owner writes `newer`
        records too and it comes back: the schedule where a batch left waiting would carry a
        stale value. (One rule for both, so that leaving does not crowd out reading and
        answering in the search.)"""
        partition = pick(sorted(self.owned), index)
        self.revoke(partition, lost)
        if not back:
            return
        for which, attribute in newer:
            self.produce(partition, which, attribute)
        self.other_member_takes(partition)
        self.owned.add(partition)
        self.rig.assign(partition, at={partition: self.committed[partition]})

    def revoke(self, partition: int, lost: bool) -> None:
        self.owned.discard(partition)
        final = self.run(self.rig.revoke(partition, lost=lost))
        if not lost and (TOPIC, partition) in final:
            self.committed[partition] = final[(TOPIC, partition)]
        self.other_member_takes(partition)

    def other_member_takes(self, partition: int) -> None:
        """The next owner re-reads from the commit and writes each event, in order. Events
        this member already finished (Target has them, or they were dead-lettered) are marked
        as replayed: after a lost partition (no final commit) the replay goes back to older
        values before it reaches the newest again, which at-least-once allows and no member
        can avoid."""
        log = self.logs[partition]
        finished = self.written() | {(r.partition, r.offset) for r, _ in self.rig.dlq.written}
        for offset in range(self.committed[partition], len(log)):
            key, attributes = log[offset]
            self.rig.target.write(key, attributes)
            if (partition, offset) in finished:
                self.rig.target.history[-1]["replay"] = True
            self.done.add((partition, offset))
        self.committed[partition] = len(log)

    # --- records and sends ----------------------------------------------------------------

    @precondition(lambda self: self.owned)
    @rule(
        index=st.integers(0, 1),
        records=st.lists(st.tuples(WHICH, st.sampled_from("vw")), min_size=1, max_size=3),
    )
    def read(self, index: int, records: list[tuple[int, str]]) -> None:
        """Read the partition's next records (producing each first when at the end)."""
        partition = pick(sorted(self.owned), index)
        log = self.logs[partition]
        for which, attribute in records:
            offset = self.rig.offsets[partition]
            if offset == len(log):
                self.produce(partition, which, attribute)
            key, attributes = log[offset]
            self.rig.submit(partition, key, offset=offset, **attributes)

    @precondition(lambda self: self.unowned())
    @rule(index=st.integers(0, 1), which=WHICH, attribute=st.sampled_from("vw"))
    def elsewhere(self, index: int, which: int, attribute: str) -> None:
        """A new record of a partition another member owns: it writes it and commits."""
        partition = pick(self.unowned(), index)
        self.produce(partition, which, attribute)
        self.other_member_takes(partition)

    def produce(self, partition: int, which: int, attribute: str) -> None:
        log = self.logs[partition]
        profiles = PROFILES[partition]
        key = profiles[which % len(profiles)]
        offset = len(log)
        value = f"{partition}-{offset}"
        log.append((key, {f"{attribute}{partition}": value, marker(partition, offset): "1"}))

    # One rule per kind of answer (not one rule drawing the kind): the search then picks each
    # about as often as the others, where a drawn kind came out as the first one most of the time.
    @precondition(lambda self: self.rig.target.open_calls())
    @rule(index=st.integers(0, 7))
    def accept(self, index: int) -> None:
        self.rig.target.accept(pick(self.rig.target.open_calls(), index))
        self.run(self.rig.settle())

    @precondition(lambda self: self.rig.target.open_calls())
    @rule(index=st.integers(0, 7), dlq_answers=st.booleans(), stays=st.booleans())
    def refuse(self, index: int, dlq_answers: bool, stays: bool) -> None:
        """Target refuses one send; unless `dlq_answers` (booleans are drawn False first),
        while the DLQ is slow, so the send then waits in the middle of dead-lettering; unless
        `stays`, its partition is then revoked, the handover cancelling it right there."""
        if not dlq_answers:
            self.rig.dlq.hold()
        call = pick(self.rig.target.open_calls(), index)
        self.rig.target.refuse(call)
        self.run(self.rig.settle())
        self.leave_with(call.attributes, stays)

    def leave_with(self, attributes: dict[str, str], stays: bool) -> None:
        """Unless `stays`, revoke the partition of the first event a request carried."""
        partition = next(int(n[1:].split("_")[0]) for n in attributes if n.startswith("e"))
        if not stays and partition in self.owned:
            self.revoke(partition, lost=False)

    @precondition(lambda self: self.rig.target.open_calls())
    @rule(index=st.integers(0, 7))
    def crash(self, index: int) -> None:
        """A bug below the pipeline fails one send."""
        self.rig.target.crash(pick(self.rig.target.open_calls(), index))
        self.run(self.rig.settle())

    @rule(how=st.sampled_from(["refuse", "accept", "crash", "by the search"]))
    def target_mood(self, how: str) -> None:
        """From now on Target answers every send as it arrives (refused, accepted, failing
        with a bug), or leaves each to the search: so that a schedule meets many answers,
        not only the few it picks one by one."""
        self.rig.target.mood = None if how == "by the search" else how

    @rule(answers=st.booleans())
    def dlq_speed(self, answers: bool) -> None:
        """A held DLQ (drawn first) keeps refused sends waiting in the middle of
        dead-lettering, where a revocation may cancel them."""
        if not answers:
            self.rig.dlq.hold()
        else:
            self.rig.dlq.release()
            self.run(self.rig.settle())

    @rule(seconds=st.sampled_from([1.0, 0.0, 0.5, 2.0]))
    def advance(self, seconds: float) -> None:
        self.run(self.rig.advance(seconds))

    # --- invariants -----------------------------------------------------------------------

    def written(self) -> set[tuple[int, int]]:
        """The events whose values Target has (each request names its events)."""
        events = set()
        for entry in self.rig.target.history:
            for name in entry["attributes"]:
                if name.startswith("e"):
                    partition, offset = name[1:].split("_")
                    events.add((int(partition), int(offset)))
        return events

    def finished(self) -> set[tuple[int, int]]:
        done = self.done | self.written()
        done |= {(r.partition, r.offset) for r, _ in self.rig.dlq.written}
        return done

    @invariant()
    def commit_never_passes_an_unfinished_event(self) -> None:
        finished = self.finished()
        commits = {tp[1]: offset for tp, offset in self.rig.tracker.committable().items()}
        for partition in PARTITIONS:
            upto = max(commits.get(partition, 0), self.committed[partition])
            missing = [o for o in range(upto) if (partition, o) not in finished]
            assert not missing, f"partition {partition}: commit {upto} passes unfinished {missing}"

    @invariant()
    def no_stale_overwrite(self) -> None:
        """Strict on every write but the next owner's re-sends of what Target already had;
        with those, every regression they caused is corrected by the replay itself."""
        updates = [update for p in PARTITIONS for update in self.logs[p]]
        history = self.rig.target.history
        assert_no_stale_overwrite([h for h in history if not h.get("replay")], updates)
        assert_regressions_corrected(history, updates)

    @invariant()
    def buffered_is_never_negative(self) -> None:
        assert self.rig.pipeline.buffered >= 0

    def answer_everything(self) -> None:
        """The input has stopped: Target accepts every send, time passes."""
        self.rig.target.mood = "accept"
        for _ in range(200):
            calls = self.rig.target.open_calls()
            if not calls and self.rig.pipeline.buffered == 0:
                break
            for call in calls:
                self.rig.target.accept(call)
            self.run(self.rig.advance(1.0))

    def quiesce(self) -> None:
        """No stall: with no more input, answering every send finishes every event read."""
        self.rig.dlq.release()
        self.answer_everything()
        assert self.rig.pipeline.buffered == 0, "stalled: events still buffered"
        self.commit_never_passes_an_unfinished_event()
        self.no_stale_overwrite()
        read = {(tp[1], o) for tp, o in self.rig.tracker.committable().items()}
        for partition, offset in read:
            assert offset == self.rig.offsets[partition], "an owned partition's commit is behind"


# Derandomized and without the example database: the same schedules on every run and machine.
Schedules.TestCase.settings = settings(
    max_examples=150, stateful_step_count=30, deadline=None, derandomize=True, database=None
)
TestSchedules = Schedules.TestCase
