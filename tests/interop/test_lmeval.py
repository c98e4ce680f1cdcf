"""The lm-evaluation-harness wrapper (``longssm.interop.lmeval``), float64.

References: ``loglikelihood_rolling`` against one full forward pass of the model and against
``longssm.eval.evaluate_lengths`` (reset protocol, one window); ``loglikelihood`` against the
same full pass restricted to the continuation, and its ``is_greedy`` against
``SSMLanguageModel.generate`` at temperature 0; ``generate_until`` against ``generate``, cut at a
stop string. With ``lm_eval`` installed: a local multiple-choice task, a rolling-perplexity task
and a generation task (YAML over JSONL in a temporary folder) through ``simple_evaluate`` and
through lm-eval's command line.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from longssm.checkpoint import save_checkpoint
from longssm.data import ByteTokenizer
from longssm.eval.lengths import evaluate_lengths
from longssm.interop.lmeval import LongSSMLM
from longssm.models import ModelConfig, SSMLanguageModel

TEXT = (
    "State-space models carry a hidden state from one token to the next; trained on short "
    "contexts, they may or may not extend to long ones. "
) * 6


def _model(vocab: int, seed: int = 0) -> SSMLanguageModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(mixer="mamba", d_model=16, n_layers=2, d_state=4, d_conv=4, vocab_size=vocab)
    model = SSMLanguageModel(cfg).double()
    # larger dynamics than the init so that the carried state visibly changes the losses
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


class LetterTokenizer:
    """Ten symbols ``abcdefghi `` -> ids 0..9, separator 10: every id decodes to text, so a greedy
    continuation can be written as a string."""

    chars = "abcdefghi "
    vocab_size = 11
    sep_id = 10

    def encode(self, text):
        return [self.chars.index(c) for c in text]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids if i != self.sep_id)


@pytest.fixture
def run(tmp_path):
    """A run directory holding a random float64 byte-level Mamba."""
    model = _model(ByteTokenizer.vocab_size)
    config = {"model": model.cfg.to_dict(), "data": {"seq_len": 16},
              "train": {"dtype": "float64", "policy": "previous"}}  # fmt: skip
    meta = {"config": config, "tokenizer": ByteTokenizer().to_dict(), "step": 1}
    save_checkpoint(tmp_path / "run" / "checkpoints" / "ckpt-00000001", model, meta)
    return tmp_path / "run", model


@pytest.fixture
def letters():
    model = _model(LetterTokenizer.vocab_size, seed=3)
    return model, LongSSMLM(model=model, tokenizer=LetterTokenizer(), device="cpu", progress=False)


def _full_pass_logprobs(model, ids):
    """log p(ids[t] | ids[:t]) for t >= 1 from ONE forward pass: (len(ids) - 1,) float64."""
    tokens = torch.tensor([ids])
    with torch.no_grad():
        logits = model(tokens[:, :-1])[0][0]  # (N-1, V)
    return F.log_softmax(logits.double(), -1).gather(-1, tokens[0, 1:, None]).squeeze(-1)


@pytest.mark.parametrize("chunk_size", [5, 7, 64, 100, 5000])
def test_rolling_equals_one_full_pass(run, chunk_size):
    path, model = run
    lm = LongSSMLM(str(path), device="cpu", chunk_size=chunk_size, progress=False)
    ids = [ByteTokenizer.sep_id, *TEXT.encode()]
    # 816 targets: chunk sizes 5, 7, 64 and 100 leave a partial last chunk; 5000 is one pass
    assert len(ids) - 1 == 816
    expected = _full_pass_logprobs(model, ids).sum().item()
    (got,) = lm.loglikelihood_rolling([(TEXT,)])
    assert abs(got - expected) < 1e-9, (got, expected)
    assert got < -100  # a random model: about log(1/257) per byte


def test_rolling_equals_longssm_eval(run):
    """The same sum from the evaluation package: one reset window over ``[sep] + text``."""
    path, model = run
    ids = torch.tensor([ByteTokenizer.sep_id, *TEXT.encode()])
    n = len(ids) - 1
    (record,) = evaluate_lengths(model, ids, [n], "reset", n_tokens=n, batch_size=1,
                                 chunk_size=50, progress=False, start=0)  # fmt: skip
    assert record["n_tokens"] == n
    lm = LongSSMLM(str(path), device="cpu", chunk_size=33, progress=False)
    (got,) = lm.loglikelihood_rolling([(TEXT,)])
    assert abs(got + record["loss"] * n) < 1e-9, (got, -record["loss"] * n)


def test_rolling_batches_texts_of_different_lengths(run):
    """Right-padded batches give what each text gives alone (a causal model never sees the pad)."""
    path, model = run
    texts = [TEXT[:300], TEXT, "", "x", TEXT[:77]]
    alone = LongSSMLM(str(path), device="cpu", chunk_size=40, batch_size=1, progress=False)
    batched = LongSSMLM(str(path), device="cpu", chunk_size=40, batch_size=3, progress=False)
    a, b = alone.loglikelihood_rolling(texts), batched.loglikelihood_rolling(texts)
    assert a[2] == 0.0 and a[3] < 0
    for t, x, y in zip(texts, a, b):
        ref = _full_pass_logprobs(model, [256, *t.encode()]).sum().item() if t else 0.0
        assert abs(x - ref) < 1e-9 and abs(y - ref) < 1e-9, (len(t), x, y, ref)


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_hf_directory(kind, tmp_path):
    """An HF directory (float32, its own tokenizer.json) through ``load_source``."""
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    from longssm.data import HFTokenizer
    from tests.interop.test_pretrained import _save_hf

    hf = _save_hf(kind, tmp_path / "hf")
    tok = HFTokenizer.load(tmp_path / "hf")
    ids = [tok.sep_id, *tok.encode(TEXT[:300])]
    with torch.no_grad():
        logits = hf(torch.tensor([ids[:-1]]), use_cache=False).logits[0].double()
    expected = F.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None]).sum().item()
    lm = LongSSMLM(str(tmp_path / "hf"), device="cpu", chunk_size=13, progress=False)
    (got,) = lm.loglikelihood_rolling([(TEXT[:300],)])
    # float32 model: the sum of ~100 log-probabilities agrees to float32 rounding
    assert got == pytest.approx(expected, rel=1e-5), (got, expected)


def test_loglikelihood_is_the_continuation_sum(run):
    path, model = run
    lm = LongSSMLM(str(path), device="cpu", chunk_size=16, batch_size=2, progress=False)
    pairs = [(TEXT[:200], " state"), ("", "hidden"), ("length ", "extension"), (TEXT, "!")]
    results = lm.loglikelihood(pairs)
    for (context, continuation), (logp, _) in zip(pairs, results):
        # lm-eval's convention: trailing whitespace of the context belongs to the continuation
        stripped = context.rstrip()
        cont = (context[len(stripped) :] + continuation).encode()
        ids = [256, *stripped.encode(), *cont]
        expected = _full_pass_logprobs(model, ids)[-len(cont) :].sum().item()
        assert abs(logp - expected) < 1e-9, (context[-10:], continuation, logp, expected)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_shared_contexts_run_once_and_score_as_full_sequences(run, batch_size, monkeypatch):
    """Multiple-choice requests (one context, several continuations) through the prefix-state
    cache == the full sequences scored one by one (``prefix_cache=False``) and == one forward pass
    each, to 1e-9 in float64, greedy flags included; continuations longer than a chunk, a context
    ending in whitespace, an empty context, and a group with an empty continuation (scored alone);
    each shared context is prefilled once."""
    path, model = run
    long_cont = " " + TEXT[:40]
    pairs = [(TEXT[:150], " state"), (TEXT[:150], " hidden"), (TEXT[:150], long_cont),
             ("", "ab"), ("", "abc"), ("alone", " x"), ("tail ", "end"), ("tail ", "ending"),
             ("empty", ""), ("empty", "y")]  # fmt: skip
    cached = LongSSMLM(str(path), device="cpu", chunk_size=16, batch_size=batch_size,
                       progress=False)  # fmt: skip
    plain = LongSSMLM(str(path), device="cpu", chunk_size=16, batch_size=batch_size,
                      progress=False, prefix_cache="false")  # fmt: skip
    prefilled = []
    prefill = cached.prefill
    monkeypatch.setattr(cached, "prefill", lambda ids: prefilled.append(len(ids)) or prefill(ids))
    got, want = cached.loglikelihood(pairs), plain.loglikelihood(pairs)
    assert sorted(prefilled) == [1, 5, 151]  # "", "tail" (stripped), TEXT[:150]: once each
    for (context, continuation), (logp, greedy), (ref, ref_greedy) in zip(pairs, got, want):
        stripped = context.rstrip()
        cont = (context[len(stripped) :] + continuation).encode()
        ids = [256, *stripped.encode(), *cont]
        expected = _full_pass_logprobs(model, ids)[-len(cont) :].sum().item() if cont else 0.0
        assert abs(logp - expected) < 1e-9 and abs(ref - expected) < 1e-9, (context[-8:], logp)
        assert greedy == ref_greedy


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_is_greedy_on_a_constructed_case(letters, prefix_cache):
    """Requests sharing a context: scored through the prefix-state cache, or each alone."""
    model, _ = letters
    lm = LongSSMLM(model=model, tokenizer=LetterTokenizer(), device="cpu", progress=False,
                   prefix_cache=prefix_cache)  # fmt: skip
    context = "abcab hig"
    prompt = torch.tensor([[LetterTokenizer.sep_id, *LetterTokenizer().encode(context)]])
    greedy, _ = model.generate(prompt, 5, temperature=0)
    greedy = greedy[0].tolist()
    if LetterTokenizer.sep_id in greedy:
        greedy = greedy[: greedy.index(LetterTokenizer.sep_id)]
    assert len(greedy) >= 2, "the constructed case needs a greedy run of at least 2 symbols"
    text = LetterTokenizer().decode(greedy)
    # the same continuation with its last symbol changed is not greedy and strictly less likely
    other = text[:-1] + next(c for c in LetterTokenizer.chars if c != text[-1])
    (lp_greedy, is_greedy), (lp_other, other_greedy) = lm.loglikelihood(
        [(context, text), (context, other)]
    )
    assert is_greedy and not other_greedy
    assert lp_other < lp_greedy < 0
    # greedy through the first symbol alone too; not greedy when the first symbol differs
    first_other = next(c for c in LetterTokenizer.chars if c != text[0])
    (_, g1), (_, g2) = lm.loglikelihood([(context, text[0]), (context, first_other)])
    assert g1 and not g2


def _reference_generation(model, context, n):
    prompt = torch.tensor([[LetterTokenizer.sep_id, *LetterTokenizer().encode(context)]])
    out = model.generate(prompt, n, temperature=0)[0][0].tolist()
    if LetterTokenizer.sep_id in out:
        out = out[: out.index(LetterTokenizer.sep_id)]
    return LetterTokenizer().decode(out)


def test_generate_until_max_gen_toks_and_stop_strings(letters):
    model, lm = letters
    lm.chunk_size = 3  # the prompt is prefilled in chunks with the state carried
    context = "abcab hig"
    ref = _reference_generation(model, context, 40)
    assert len(ref) >= 8, "the constructed case needs a long greedy run"
    (text,) = lm.generate_until([(context, {"until": [], "max_gen_toks": 6})])
    assert text == ref[:6]
    (text,) = lm.generate_until([(context, {"max_gen_toks": 40})])
    assert text == ref
    # stop at the first occurrence of a stop string, which is cut off
    stop = ref[5:7]
    cut = ref.find(stop)
    (text,) = lm.generate_until([(context, {"until": ["zz", stop], "max_gen_toks": 40})])
    assert text == ref[:cut] and stop not in text
    (text,) = lm.generate_until([(context, {"until": stop, "max_gen_toks": 3})])
    assert text == ref[: min(cut, 3)]


def test_generate_until_samples_reproducibly(letters):
    model, _ = letters
    kwargs = {"do_sample": True, "temperature": 1.5, "max_gen_toks": 30, "until": []}
    requests = [(context, kwargs) for context in ("abc", "hig", "a b", "ffff", "i")]
    runs = [
        LongSSMLM(model=model, tokenizer=LetterTokenizer(), device="cpu", seed=s, progress=False)
        .generate_until(requests)
        for s in (7, 7, 8)
    ]  # fmt: skip
    assert runs[0] == runs[1] and runs[0] != runs[2]
    # a drawn separator ends a text early; none is longer than max_gen_toks
    assert all(len(t) <= 30 for t in runs[0]) and any(runs[0])


def test_bad_arguments(run, tmp_path):
    path, model = run
    with pytest.raises(ValueError, match="either path"):
        LongSSMLM()
    with pytest.raises(ValueError, match="tokenizer="):
        LongSSMLM(model=model)
    with pytest.raises(ValueError, match="chunk_size"):
        LongSSMLM(str(path), device="cpu", chunk_size=0)
    with pytest.raises(ValueError, match="dtype"):
        LongSSMLM(str(path), device="cpu", dtype="float8")
    with pytest.raises(ValueError, match="rows"):
        LongSSMLM(model=_model(11), tokenizer=ByteTokenizer(), device="cpu")
    from longssm.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="no such run"):
        LongSSMLM(str(tmp_path / "missing"))


# -- through lm-evaluation-harness --------------------------------------------------------


CHOICES = ["state", "space", "model", "length"]


def _write_tasks(root):
    """Three local tasks over JSONL files: multiple choice, rolling perplexity, generation."""
    root.mkdir()
    rows = [{"question": f"Word {i}:", "choices": CHOICES, "label": i} for i in range(4)]
    (root / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    docs = [{"text": TEXT[: 60 * (i + 1)]} for i in range(3)]
    (root / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in docs))
    common = "dataset_path: json\ntest_split: test\n"
    (root / "toy_mc.yaml").write_text(
        f"task: toy_mc\n{common}dataset_kwargs:\n  data_files:\n    test: {root / 'mc.jsonl'}\n"
        "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_target: label\n"
        "doc_to_choice: '{{choices}}'\nmetric_list:\n"
        "  - {metric: acc, aggregation: mean, higher_is_better: true}\n"
        "  - {metric: acc_norm, aggregation: mean, higher_is_better: true}\n"
    )
    (root / "toy_ppl.yaml").write_text(
        f"task: toy_ppl\n{common}dataset_kwargs:\n  data_files:\n    test: {root / 'docs.jsonl'}\n"
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n"
        "  - metric: bits_per_byte\n"
    )
    (root / "toy_gen.yaml").write_text(
        f"task: toy_gen\n{common}dataset_kwargs:\n  data_files:\n    test: {root / 'mc.jsonl'}\n"
        "output_type: generate_until\ndoc_to_text: '{{question}}'\n"
        "doc_to_target: '{{choices[label]}}'\n"
        "generation_kwargs:\n  until: ['\\n', '.']\n  max_gen_toks: 8\n  do_sample: false\n"
        "metric_list:\n  - {metric: exact_match, aggregation: mean, higher_is_better: true}\n"
    )
    return root


@pytest.fixture
def harness(monkeypatch):
    pytest.importorskip("lm_eval")
    pytest.importorskip("datasets")
    # the hub is unreachable: everything must come from the local files
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.slow
def test_simple_evaluate_on_local_tasks(harness, run, tmp_path):
    import lm_eval
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    path, model = run
    assert get_model("longssm") is LongSSMLM
    lm = get_model("longssm").create_from_arg_string(
        f"path={path},chunk_size=32,progress=false", {"batch_size": 4, "device": "cpu"}
    )
    tasks = _write_tasks(tmp_path / "tasks")
    out = lm_eval.simple_evaluate(model=lm, tasks=["toy_mc", "toy_ppl", "toy_gen"],
                                  task_manager=TaskManager(include_path=str(tasks)))  # fmt: skip
    res = out["results"]
    acc = res["toy_mc"]["acc,none"]
    assert 0.0 <= acc <= 1.0 and acc in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert math.isfinite(res["toy_mc"]["acc_stderr,none"])
    # the harness's perplexities are exp of the rolling sums we return
    texts = [TEXT[: 60 * (i + 1)] for i in range(3)]
    total = sum(_full_pass_logprobs(model, [256, *t.encode()]).sum().item() for t in texts)
    n_bytes = sum(len(t.encode()) for t in texts)
    ppl = res["toy_ppl"]
    assert ppl["byte_perplexity,none"] == pytest.approx(math.exp(-total / n_bytes), rel=1e-9)
    assert ppl["bits_per_byte,none"] == pytest.approx(-total / n_bytes / math.log(2), rel=1e-9)
    assert 0.0 <= res["toy_gen"]["exact_match,none"] <= 1.0
    print("toy_mc", {k: v for k, v in res["toy_mc"].items() if "," in k})
    print("toy_ppl", {k: v for k, v in ppl.items() if "," in k})


@pytest.mark.slow
def test_lm_eval_command_line(harness, run, tmp_path, capsys):
    from longssm.interop.lmeval import main

    path, _ = run
    tasks = _write_tasks(tmp_path / "tasks")
    main(["--model", "longssm", "--model_args", f"path={path},chunk_size=64",
          "--tasks", "toy_mc", "--include_path", str(tasks), "--device", "cpu",
          "--batch_size", "2", "--output_path", str(tmp_path / "out")])  # fmt: skip
    files = list((tmp_path / "out").rglob("results_*.json"))
    assert len(files) == 1
    acc = json.loads(files[0].read_text())["results"]["toy_mc"]["acc,none"]
    assert 0.0 <= acc <= 1.0
