"""Dataset layer on a stored calc search: grouping, train-only split, strict policy records."""

from __future__ import annotations

import shutil

import pytest
from sqlalchemy import select, update

from storage.engine import open_db, session_scope
from storage.models import Generation, Problem
from tests.helpers.learner import RUN, add_policy_samples, calc_search_db, fresh_copy
from workflow_rl.errors import WorkflowRLError
from workflow_rl.learner.dataset import DatasetFilter, load_samples
from workflow_rl.policy.model import Policy


@pytest.fixture(scope="module")
def policy(tiny_cache):
    return Policy.load("builtin:tiny", cache_dir=tiny_cache)


@pytest.fixture(scope="module")
def stored_once(tmp_path_factory):
    path = tmp_path_factory.mktemp("calcdb")
    return calc_search_db(path, n_train=6, n_val=4), path / "learner.db"


@pytest.fixture
def stored(stored_once, tmp_path):
    """A fresh copy of the module's stored calc search (tests may modify it)."""
    (_, bench), src = stored_once
    return fresh_copy(src, tmp_path), bench


def test_search_samples_are_train_only_and_grouped_by_problem(stored, policy):
    url, bench = stored
    engine = open_db(url)
    samples, stats = load_samples(engine, DatasetFilter(run=RUN), policy)
    with session_scope(engine) as s:
        split = dict(s.execute(select(Problem.id, Problem.split)).all())
    assert {split[x.problem_id] for x in samples} == {"train"}  # validation never leaks
    n_codes = len(set(bench.seed_workflows().values()) | set(bench.oracle_workflows().values()))
    assert stats.samples == len(samples) == n_codes * 6
    assert stats.groups == 6 and stats.search == len(samples) and stats.policy == 0
    for x in samples:
        assert x.source == "search" and x.behavior_logprobs is None
        assert x.group_id == f"p{x.problem_id}"
        assert list(x.completion_token_ids) == policy.encode(x.completion) + [policy.eos_token_id]
        assert policy.decode_completion(x.completion_token_ids) == x.completion
        assert x.prompt.endswith("### Workflow\n") and x.prompt_token_ids == tuple(policy.encode(x.prompt))
    # every train problem has exactly one recipe workflow that solves it (plus seeds sometimes)
    for g in {x.group_id for x in samples}:
        assert max(x.reward for x in samples if x.group_id == g) == 1.0
    with pytest.raises(WorkflowRLError, match="never enter training"):
        load_samples(engine, DatasetFilter(run=RUN, split="validation"), policy)
    with pytest.raises(WorkflowRLError, match="not found"):
        load_samples(engine, DatasetFilter(run="nope"), policy)


@pytest.fixture(scope="module")
def policy_once(stored_once, policy, tmp_path_factory):
    """The stored search plus policy samples (2 prompts x 3 siblings at T = 0.7), built once."""
    (_, bench), src = stored_once
    path = tmp_path_factory.mktemp("policydb") / "learner.db"
    shutil.copy(src, path)
    n = add_policy_samples(f"sqlite:///{path}", bench, policy, n=3, temperature=0.7, n_problems=2)
    # The premise of the tests below: each prompt's group keeps >= 2 stored samples (min_group_size),
    # though a sample whose code the search (or a sibling) already stored is not stored again.
    engine = open_db(f"sqlite:///{path}")
    with session_scope(engine) as s:
        keys = [g.group_key for g in s.scalars(select(Generation).order_by(Generation.id))]
    engine.dispose()
    sizes = {k: keys.count(k) for k in keys}
    assert len(sizes) == 2 and min(sizes.values()) >= 2, (
        f"premise: each of the 2 prompts keeps >= 2 distinct policy samples, stored {sizes}")
    return path, n


@pytest.fixture
def with_policy(policy_once, stored_once, tmp_path):
    """A fresh copy of the database with policy samples, and how many were stored."""
    src, n = policy_once
    return fresh_copy(src, tmp_path), n


def test_group_filters(stored, policy):
    url, _ = stored
    engine = open_db(url)
    samples, stats = load_samples(engine, DatasetFilter(run=RUN, min_group_size=100), policy)
    assert samples == [] and stats.dropped["small_group"] > 0
    # every calc group has one winner among many losers: no zero-variance groups
    _, stats = load_samples(engine, DatasetFilter(run=RUN, drop_zero_std=True), policy)
    assert stats.zero_std_frac == 0.0 and stats.dropped["zero_std"] == 0
    samples, stats = load_samples(engine, DatasetFilter(run=RUN, max_completion_tokens=20), policy)
    assert stats.dropped["too_long"] > 0 and all(len(x.completion_token_ids) <= 20 for x in samples)


def test_policy_samples_keep_exact_ids_and_logprobs(with_policy, policy):
    url, n = with_policy
    assert n > 0
    engine = open_db(url)
    samples, stats = load_samples(engine, DatasetFilter(run=RUN, min_group_size=1), policy)
    with session_scope(engine) as s:
        gens = {g.workflow_id: g for g in s.scalars(select(Generation))}
    pol = [x for x in samples if x.source == "policy"]
    assert len(pol) == n == stats.policy
    for x in pol:
        g = gens[x.workflow_id]
        assert x.completion_token_ids == tuple(g.completion_token_ids)
        assert x.prompt_token_ids == tuple(g.prompt_token_ids)
        assert x.behavior_logprobs == tuple(g.behavior_logprobs) and x.temperature == 0.7
        assert x.group_id == f"p{g.problem_id}/{g.group_key}"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"behavior_logprobs": None}, "without behavior logprobs"),
        ({"temperature": None}, "temperature/top_p not recorded"),
        ({"top_p": None}, "temperature/top_p not recorded"),
        ({"top_p": 0.9}, "top_p = 1"),
        ({"temperature": 0.0}, "temperature > 0"),
        ({"completion_token_ids": [1, 2, 3]}, "behavior logprobs for 3 tokens|do not decode"),
        ({"prompt_token_ids": [5]}, "prompt token ids do not match"),
    ],
)
def test_bad_policy_records_are_rejected_not_zero_filled(with_policy, policy, change, message):
    url, _ = with_policy
    engine = open_db(url)
    with session_scope(engine) as s:
        s.execute(update(Generation).values(**change))
    with pytest.raises(WorkflowRLError, match=message):
        load_samples(engine, DatasetFilter(run=RUN, min_group_size=1), policy)


def test_edited_policy_completion_is_search_data(with_policy, policy):
    url, _ = with_policy
    engine = open_db(url)
    with session_scope(engine) as s:  # the stored workflow no longer equals what was sampled
        s.execute(update(Generation).values(completion_text="something the policy never sampled"))
    samples, stats = load_samples(engine, DatasetFilter(run=RUN, min_group_size=1), policy)
    assert stats.policy == 0 and all(x.behavior_logprobs is None for x in samples)


def test_invalid_policy_programs_are_reward_zero_policy_samples(with_policy, policy):
    """A program the policy wrote that fails validation is never run, but it is what the policy
    sampled: it stays in its group as a policy sample with reward 0 (else nothing would ever push
    the policy away from invalid code)."""
    from sqlalchemy import delete

    from storage.models import Evaluation, Workflow

    url, _ = with_policy
    engine = open_db(url)
    with session_scope(engine) as s:
        gen = s.scalars(select(Generation).order_by(Generation.id)).first()
        wf = s.get(Workflow, gen.workflow_id)
        s.execute(delete(Evaluation).where(Evaluation.workflow_id == wf.id))
        wf.valid, wf.error = False, "made invalid by the test"
        key = (wf.id, gen.problem_id)
    samples, stats = load_samples(engine, DatasetFilter(run=RUN), policy)
    hit = [x for x in samples if (x.workflow_id, x.problem_id) == key]
    assert len(hit) == 1 and hit[0].source == "policy" and hit[0].reward == 0.0
    assert hit[0].behavior_logprobs and stats.invalid_policy == 1


def test_a_program_sampled_twice_counts_twice_in_its_group(with_policy, policy):
    """Each generation row is one sample: the same program drawn twice for one prompt is two
    members of the GRPO group (its frequency is part of the group's mean and weights)."""
    from storage.repo import add_generation

    url, _ = with_policy
    engine = open_db(url)
    before, _ = load_samples(engine, DatasetFilter(run=RUN), policy)
    with session_scope(engine) as s:
        gen = s.scalars(select(Generation).order_by(Generation.id)).first()
        fields = {c.name: getattr(gen, c.name) for c in Generation.__table__.columns if c.name != "id"}
        add_generation(s, **fields)
        key = (gen.workflow_id, gen.problem_id, gen.group_key)
    after, _ = load_samples(engine, DatasetFilter(run=RUN), policy)
    assert len(after) == len(before) + 1
    twins = [x for x in after if (x.workflow_id, x.problem_id) == key[:2] and x.group_id.endswith(key[2])]
    assert len(twins) == 2 and twins[0] == twins[1] and twins[0].source == "policy"


def test_positive_search_samples_join_the_policy_group_of_their_problem(with_policy, policy):
    """``search_samples="positive"`` keeps only search programs above their group's mean reward
    (ratio-1 samples are never pushed down), and ``group_by_prompt=False`` puts them in the same
    group as the policy's samples of that problem."""
    url, _ = with_policy
    engine = open_db(url)
    everything, _ = load_samples(engine, DatasetFilter(run=RUN, min_group_size=1, group_by_prompt=False), policy)
    samples, stats = load_samples(engine, DatasetFilter(run=RUN, min_group_size=1, group_by_prompt=False,
                                                        search_samples="positive"), policy)
    groups: dict[str, list] = {}
    for x in everything:
        groups.setdefault(x.group_id, []).append(x)
    mean = {g: sum(x.reward for x in m) / len(m) for g, m in groups.items()}
    expected = [x for x in everything if x.source == "policy" or x.reward > mean[x.group_id]]
    assert samples == expected
    assert stats.dropped["search_filtered"] == len(everything) - len(expected) > 0
    searched = [x for x in samples if x.source == "search"]
    assert searched and all(x.reward == 1.0 for x in searched)  # calc: the one recipe that solves it
    mixed = {x.group_id for x in samples if x.source == "policy"} & {x.group_id for x in searched}
    assert mixed  # a problem's policy samples and its search winners share one group
    with pytest.raises(ValueError, match="search_samples"):
        DatasetFilter(run=RUN, search_samples="best")


def test_search_per_group_keeps_the_best_right_and_the_most_winning_wrong_samples(with_policy, policy):
    """``search_per_group=1`` keeps, per group, one search sample above the group's mean (the highest
    reward, then the shortest completion) and one below it (the program that beats the mean in the most
    other groups, then the shortest); policy samples are never dropped by it. With ``positive`` only the
    one above is left."""
    from collections import Counter

    url, _ = with_policy
    engine = open_db(url)
    kw = dict(run=RUN, min_group_size=1, group_by_prompt=False)
    everything, _ = load_samples(engine, DatasetFilter(**kw), policy)
    capped, stats = load_samples(engine, DatasetFilter(**kw, search_per_group=1), policy)
    groups: dict[str, list] = {}
    for x in everything:
        groups.setdefault(x.group_id, []).append(x)
    mean = {g: sum(x.reward for x in m) / len(m) for g, m in groups.items()}
    wins = Counter(x.workflow_id for x in everything if x.source == "search" and x.reward > mean[x.group_id])
    chosen = set()
    for g, members in groups.items():
        search = [x for x in members if x.source == "search"]
        up = [x for x in search if x.reward > mean[g]]
        down = [x for x in search if x.reward <= mean[g]]
        if up:
            chosen.add(id(min(up, key=lambda x: (-x.reward, len(x.completion_token_ids), x.completion_token_ids))))
        if down:
            chosen.add(id(min(down, key=lambda x: (-wins[x.workflow_id], len(x.completion_token_ids),
                                                   x.completion_token_ids))))
    expected = [x for x in everything if x.source == "policy" or id(x) in chosen]
    assert capped == expected
    assert stats.dropped["search_capped"] == sum(x.source == "search" for x in everything) - len(chosen) > 0
    kept_search = [x for x in capped if x.source == "search"]
    assert {x.reward for x in kept_search} == {0.0, 1.0}  # a right program and a wrong one
    assert any(wins[x.workflow_id] > 0 for x in kept_search if x.reward == 0.0)  # wrong here, right elsewhere
    positive, _ = load_samples(engine, DatasetFilter(**kw, search_samples="positive", search_per_group=1), policy)
    assert [x for x in positive if x.source == "search"] == [x for x in kept_search if x.reward > mean[x.group_id]]
    with pytest.raises(WorkflowRLError, match="search_per_group"):
        from workflow_rl.learner.config import TrainConfig

        TrainConfig(run=RUN, search_per_group=0)


def test_sample_order_does_not_follow_workflow_ids(with_policy, policy):
    """The learner shuffles samples by position, so their order must not depend on database ids:
    the same programs stored under other workflow ids (a search that stored other programs first)
    give the same samples in the same order."""
    import dataclasses
    import sqlite3

    from storage.models import Base

    url, _ = with_policy
    engine = open_db(url)
    before, _ = load_samples(engine, DatasetFilter(run=RUN), policy)
    engine.dispose()
    refs = [(t.name, c.name) for t in Base.metadata.sorted_tables for c in t.columns
            for fk in c.foreign_keys if fk.column.table.name == "workflows" and fk.column.name == "id"]
    assert ("evaluations", "workflow_id") in refs and ("generations", "workflow_id") in refs
    con = sqlite3.connect(url.removeprefix("sqlite:///"))
    con.execute("PRAGMA foreign_keys=OFF")
    with con:  # renumber every workflow in reverse order, with every reference to it
        for table, column in [("workflows", "id"), *refs]:
            con.execute(f"UPDATE {table} SET {column} = 1000000 - {column} WHERE {column} IS NOT NULL")
    con.close()
    after, _ = load_samples(open_db(url), DatasetFilter(run=RUN), policy)
    assert {x.workflow_id for x in after}.isdisjoint({x.workflow_id for x in before})  # renumbered
    assert len({x.source for x in before}) == 2 and len({x.completion for x in before}) > len({x.problem_id for x in before})

    def unnumbered(samples):
        return [dataclasses.replace(x, workflow_id=0) for x in samples]

    assert unnumbered(after) == unnumbered(before)
