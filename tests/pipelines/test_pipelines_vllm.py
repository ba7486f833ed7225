"""`--generator vllm`: the adapter hands vLLM the chat-template token ids our own generation uses and
turns its outputs into the same Sample records (checked here against a stand-in `vllm` module, so it
runs without a GPU); the real engine is compared with transformers' generate where vLLM and a GPU
exist (skipped otherwise). Without vLLM the generator is refused by name before anything runs."""
import importlib.util
import sys
import types

import pytest
from tiny import save_tiny

from rdpo_fast.lm.chat import prompt_text, user_turn
from rdpo_fast.lm.generation import GenerationSettings
from rdpo_fast.lm.vllm import generate_vllm, to_sample

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def _out(text, ids, reason):
    return types.SimpleNamespace(text=text, token_ids=ids, finish_reason=reason)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny(str(tmp_path_factory.mktemp("vllm") / "model"))


@pytest.fixture
def fake_vllm(monkeypatch):
    calls = {}

    class LLM:
        def __init__(self, **kw):
            calls["llm"] = kw

        def generate(self, prompts, params, use_tqdm=True):
            calls["prompts"], calls["params"] = prompts, params
            outs = []
            for i, p in enumerate(params):
                outs.append(types.SimpleNamespace(outputs=[
                    _out(f"answer {i}.{j}", [5, 6, 2] if j % 2 == 0 else [5, 6, 7], "stop" if j % 2 == 0 else "length")
                    for j in range(p.kw["n"])]))
            return outs

    class SamplingParams:
        def __init__(self, **kw):
            self.kw = kw

    mod = types.ModuleType("vllm")
    mod.LLM, mod.SamplingParams = LLM, SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", mod)
    return calls


def test_vllm_adapter_uses_our_chat_tokens_and_returns_samples(fake_vllm, model_dir):
    from rdpo_fast.models import loading as modeling

    tok = modeling.load_tokenizer(model_dir)
    convs = [user_turn("Name a colour."), user_turn("Say hi.", system=None)]
    s = GenerationSettings(max_new_tokens=7, temperature=0.9, top_p=1.0, seed=3, progress=False)
    out = generate_vllm(model_dir, tok, convs, num_samples=3, settings=s)
    want = [tok(prompt_text(tok, c), add_special_tokens=False)["input_ids"] for c in convs]
    assert [p["prompt_token_ids"] for p in fake_vllm["prompts"]] == want
    assert fake_vllm["llm"]["model"] == model_dir and fake_vllm["llm"]["seed"] == 3
    kws = [p.kw for p in fake_vllm["params"]]
    assert all((k["n"], k["temperature"], k["top_p"], k["max_tokens"]) == (3, 0.9, 1.0, 7) for k in kws)
    assert [k["seed"] for k in kws] == [3, 4]  # one seed per prompt: reproducible and distinct
    assert kws[0]["stop_token_ids"] == [tok.eos_token_id]
    assert [[x.text for x in o] for o in out] == [[f"answer {i}.{j}" for j in range(3)] for i in range(2)]
    assert [(x.finished, x.num_tokens) for x in out[0]] == [(True, 3), (False, 3), (True, 3)]


def test_vllm_outputs_count_the_end_token_either_way():
    eos = [2]
    assert (to_sample(_out("a", [5, 2], "stop"), eos).num_tokens, to_sample(_out("a", [5], "stop"), eos).num_tokens) \
        == (2, 2)
    t = to_sample(_out("cut", [5, 6, 7], "length"), eos)
    assert t.truncated and t.num_tokens == 3
    with pytest.raises(ValueError, match="abort"):
        to_sample(_out("x", [5], "abort"), eos)


def test_vllm_generator_dispatch_in_the_round_driver(fake_vllm, model_dir, tmp_path):
    from rdpo_fast.models import loading as modeling
    from rdpo_fast.pipelines.dice import DiceRounds, DiceSettings

    s = DiceSettings(generator="vllm").validate()  # the stand-in module counts as installed
    d = DiceRounds(s, str(tmp_path / "run"), log=lambda *a: None)
    d.tok = modeling.load_tokenizer(model_dir)
    out = d.generate(model_dir, [user_turn("Hi")], num_samples=2,
                     settings=GenerationSettings(max_new_tokens=4, progress=False), desc="t")
    assert len(out) == 1 and len(out[0]) == 2 and fake_vllm["llm"]["model"] == model_dir


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_vllm_generator_is_refused_without_vllm(tmp_path, capsys):
    from rdpo_fast.pipelines.cli import main

    out = tmp_path / "run"
    assert main(["dice", "--generator", "vllm", "--output-dir", str(out)]) == 2
    assert "needs vLLM" in capsys.readouterr().err and not out.exists()


@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (GPU extra: pip install 'rdpo_fast[vllm]')")
def test_vllm_greedy_matches_transformers(model_dir):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a GPU")
    from rdpo_fast.lm.generation import generate
    from rdpo_fast.models import loading as modeling

    tok = modeling.load_tokenizer(model_dir)
    convs = [user_turn("Name a colour."), user_turn("Say hi.")]
    g = GenerationSettings(max_new_tokens=8, temperature=0.0, progress=False)
    ours = generate(modeling.load_model(model_dir).eval(), tok, convs, settings=g)
    theirs = generate_vllm(model_dir, tok, convs, settings=g)
    assert [[(x.text, x.finished, x.num_tokens) for x in o] for o in ours] == \
        [[(x.text, x.finished, x.num_tokens) for x in o] for o in theirs]
