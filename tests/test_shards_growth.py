"""Growing a sharded stack from 2 to 4 shards online (`pgvote grow`, pgvote/grow.py) under k6 load through
nginx: polls move with their ballots while they are voted on, and nothing acknowledged is lost or stored
twice. A module of its own: the growth changes its stack for good.
"""
from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
from reliability.checks import VotePolls, make_votes, verify
from reliability.k6round import Live, run_round

from pgvote import supervisor
from pgvote.grow import PREFIX, add_shards, copy_to, finish_move, move_polls, prepare_move
from pgvote.shards import ShardCluster, ShardedStack

from fixtures.shards import ClusterAdmin, sharded_fixtures
from helpers import Poll, PollFactory, fingerprint, user

stack, api, admin_url, admin = sharded_fixtures()


def partition(stack: ShardedStack, poll_id: str, partitions: int) -> int:
    with psycopg.connect(stack.admin_url, autocommit=True) as router:
        return int(router.execute("select router.poll_shard(%s) & %s", (poll_id, partitions - 1)).fetchone()[0])


def poll_in(stack: ShardedStack, make_poll: PollFactory, wanted: int, **body: object) -> Poll:
    """A new poll whose partition among 4 is `wanted` (so it lives on shard wanted % 2 now)."""
    for _ in range(200):
        poll = make_poll(**body)
        if partition(stack, poll.poll_id, 4) == wanted:
            return poll
    raise AssertionError(f"200 new polls, none in partition {wanted} of 4")


def holder(stack: ShardedStack, poll_id: str, shards: list[ShardCluster] | None = None) -> list[int]:
    """The shards that hold the poll, among the stack's (or the given ones: the new ones of a growth too)."""
    found = []
    for shard in shards or stack.shards:
        with psycopg.connect(shard.admin_url, autocommit=True) as conn:
            if conn.execute("select from voting.polls where poll_id = %s", (poll_id,)).fetchone() is not None:
                found.append(shard.index)
    return found


def test_growing_2_to_4_shards_under_k6_load_moves_polls_and_loses_nothing(stack: ShardedStack, api,
                                                                          make_poll: PollFactory) -> None:
    """1,200 ballots over two polls that must move (partition 2 of 4: shard 0 -> 2; 3: shard 1 -> 3) and
    a poll that stays; the two new shards start, then after 50 acknowledgments the polls move (moved:
    the last poll's move committed). Every ballot ends
    acknowledged, stored once on the poll's new shard, tallies = ballots; the poll that stays keeps its
    ballots where it was; the router is table-free again and new polls land by hash & 3."""
    single = poll_in(stack, make_poll, 2, options=["a", "b", "c", "d"], max_choices=2, allow_revote=False)
    multiple = poll_in(stack, make_poll, 3, options=["x", "y", "z"], allow_multiple_votes=True)
    staying = poll_in(stack, make_poll, 1)
    assert holder(stack, single.poll_id) == [0] and holder(stack, multiple.poll_id) == [1]
    early = api.rpc("cast_vote", {"poll_id": staying.poll_id, "option_ids": staying.option_ids[:1],
                                  "voter_fingerprint": fingerprint()})
    assert early.status == 200
    polls = VotePolls({"poll_id": single.poll_id, "option_ids": single.option_ids},
                      {"poll_id": multiple.poll_id, "option_ids": multiple.option_ids})
    votes = make_votes(polls, 1200, f"grow-{uuid.uuid4().hex[:8]}")
    # Polls for two moves a crash interrupts and for calls queued behind a move, created before the growth
    # (a poll created during one is created on its final shard).
    forward, back, queued = (poll_in(stack, make_poll, 2), poll_in(stack, make_poll, 3), poll_in(stack, make_poll, 2))
    assert (holder(stack, forward.poll_id), holder(stack, back.poll_id), holder(stack, queued.poll_id)) == ([0], [1], [0])
    for poll in (forward, back):
        assert api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": poll.option_ids[:1],
                                     "voter_fingerprint": fingerprint()}).status == 200
    new = add_shards(stack)  # the new clusters start before the load: the moves run under it
    assert [s.index for s in new] == [2, 3]
    during_growth = make_poll()
    assert holder(stack, during_growth.poll_id, stack.shards + new) == [partition(stack, during_growth.poll_id, 4)], \
        "a poll created during the growth is created on its shard among 4"
    # The growth interrupted here, the stack stopped and started again by a launcher that knows nothing
    # of it: the state dir remembers it, so all four shards run, supervised, the router still on 4
    # partitions with the growth on, and a poll on a new shard is reached.
    stack.down()
    relaunched = ShardedStack(state_dir=stack.requested_state_dir, port_base=stack.ports.base)
    relaunched.up()
    assert [s.index for s in relaunched.shards] == [0, 1] and [s.index for s in relaunched.joining] == [2, 3]
    assert {"postgres-shard-2", "postgres-shard-3"} <= set(supervisor.read_status(relaunched.state_dir)["components"])
    assert [(s["name"], s["running"], s["joining"]) for s in relaunched.status()["shards"]] == [
        ("shard-0", True, False), ("shard-1", True, False), ("shard-2", True, True), ("shard-3", True, True)]
    with psycopg.connect(stack.admin_url, autocommit=True) as router:
        assert router.execute("select active, partitions from router.growth").fetchone() == (True, 2)
    assert api.rpc("poll_results", {"poll_id": during_growth.poll_id}).status == 200
    assert [s.index for s in add_shards(relaunched)] == [2, 3], "a second run resumes the growth it finds"
    with psycopg.connect(stack.admin_url, autocommit=True) as router:
        options = router.execute("select srvoptions from pg_foreign_server where srvname = 'pgvote_shards'").fetchone()[0]
    assert sorted(o.split("=", 1)[0] for o in options if o.startswith("p")) == ["p0", "p1", "p2", "p3"]
    # Two interrupted moves: one after the target's copy committed (the decision: rolled forward), one
    # before (rolled back, then moved again); move_polls settles both first, under the load.
    copy_to(new[0], prepare_move(stack.shards[0], forward.poll_id), forward.poll_id)
    prepare_move(stack.shards[1], back.poll_id)
    # Calls queued behind a move's fence find the poll gone on its old shard, and the router calls once
    # more where it now is (cast_vote; cast_votes in a second round, beside a ballot of another poll).
    rows = prepare_move(stack.shards[0], queued.poll_id)
    with ThreadPoolExecutor(2) as pool:
        vote = pool.submit(api.rpc, "cast_vote", {"poll_id": queued.poll_id, "option_ids": queued.option_ids[:1],
                                                  "voter_fingerprint": fingerprint()})
        batch = pool.submit(api.rpc, "cast_votes", {"ballots": [
            {"poll_id": queued.poll_id, "option_ids": queued.option_ids[1:2], "voter_id": f"bulk-{uuid.uuid4()}"},
            {"poll_id": staying.poll_id, "option_ids": staying.option_ids[1:2], "voter_id": f"bulk-{uuid.uuid4()}"}]},
            claims={"role": "ingest", "sub": "edge"})
        time.sleep(1.0)
        assert not vote.done() and not batch.done(), "the calls wait behind the prepared fence"
        copy_to(new[0], rows, queued.poll_id)
        finish_move(stack.admin_url, stack.shards[0], PREFIX + queued.poll_id, queued.poll_id)
        assert vote.result().status == 200 and vote.result().body["status"] == "recorded", vote.result().body
        assert batch.result().status == 200, batch.result().body
        assert [r["status"] for r in batch.result().body["results"]] == ["recorded", "recorded"], batch.result().body
    assert holder(stack, queued.poll_id, stack.shards + new) == [2]
    queued_results = api.rpc("poll_results", {"poll_id": queued.poll_id})
    assert queued_results.body["total_ballots"] == 2, "both queued ballots stored once, on the new shard"
    moved: list[int] = []

    def grow_under_load(live: Live) -> None:
        live.after_acks(50)
        live.mark("grow")
        moved.append(move_polls(stack, new, progress=lambda message: live.mark("moved")))
        live.mark("grown")

    result = run_round(stack, votes, vus=75, fault=grow_under_load, timeout=180)
    assert len(stack.shards) == 4 and moved and moved[0] >= 3
    during = sum(result.marks["grow"] < a.finished < result.marks["moved"] for a in result.acks())
    after = sum(a.finished > result.marks["moved"] for a in result.acks())
    assert during > 0, f"the moves ran under load ({during} acknowledged during them, {after} after)"
    everywhere = ClusterAdmin([stack.admin_url] + [s.admin_url for s in stack.shards])
    verdict = verify(stack, everywhere, polls, result)
    assert verdict.duplicates == 0 and verdict.acknowledged_missing == 0
    assert holder(stack, single.poll_id) == [2] and holder(stack, multiple.poll_id) == [3]
    assert holder(stack, staying.poll_id) == [1]
    assert holder(stack, forward.poll_id) == [2] and holder(stack, back.poll_id) == [3]
    assert holder(stack, during_growth.poll_id) == [partition(stack, during_growth.poll_id, 4)]
    for poll in (forward, back):
        recovered = api.rpc("poll_results", {"poll_id": poll.poll_id})
        assert recovered.status == 200 and recovered.body["total_ballots"] == 1, "the interrupted moves lost nothing"
    results = api.rpc("poll_results", {"poll_id": staying.poll_id})
    assert results.status == 200 and results.body["total_ballots"] == 2, "its vote and its ballot of the batch"
    with psycopg.connect(stack.admin_url, autocommit=True) as router:
        assert router.execute("select count(*) from router.moved").fetchone()[0] == 0
        assert router.execute("select active from router.growth").fetchone()[0] is False
    for shard in stack.shards:
        with psycopg.connect(shard.admin_url, autocommit=True) as conn:
            assert conn.execute("select count(*) from pg_prepared_xacts").fetchone()[0] == 0
    created = [make_poll() for _ in range(8)]
    assert all(holder(stack, p.poll_id) == [partition(stack, p.poll_id, 4)] for p in created)
    voted = api.rpc("cast_vote", {"poll_id": created[0].poll_id, "option_ids": created[0].option_ids[:1]},
                    claims=user())
    assert voted.status == 200
    assert [s["name"] for s in stack.status()["shards"]] == ["shard-0", "shard-1", "shard-2", "shard-3"]
    print(f"\ngrowth 2 -> 4 under k6: {moved[0]} polls moved, {during} ballots acknowledged during the growth, "
          f"{after} after; {verdict.as_dict()}; errors {result.errors_by_kind()}")
