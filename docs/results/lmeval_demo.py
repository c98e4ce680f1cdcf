"""Regenerate docs/results/lmeval.md: longssm models scored by lm-evaluation-harness on local tasks.

    PYTHONPATH=src python docs/results/lmeval_demo.py      # about 2 minutes on 2 cores

Needs ``pip install 'longssm[lmeval]' datasets``. Steps:

1. train two small byte-level Mambas on python-stdlib at T = 16 for 300 steps, one with
   zero-initialised states and one with ``previous`` (the LongSSM policy);
2. write two lm-eval tasks as YAML over JSONL files made from the corpus's test split:
   ``stdlib_next`` (multiple choice: which of four 8-byte strings follows a 128-byte context;
   three distractors drawn from elsewhere in the split) and ``stdlib_ppl`` (rolling
   log-likelihood of whole test documents cut to 8192 bytes);
3. run both tasks through ``longssm.interop.lmeval.evaluate`` (``simple_evaluate``) and add a
   95% interval: accuracy +- 1.96 lm-eval stderr; bits per byte by a bootstrap over documents.
Writes lmeval.md and lmeval.json beside this script; runs and tasks go to results/lmeval/.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

from longssm.cli import main
from longssm.data import ByteTokenizer, load_corpus
from longssm.interop.lmeval import evaluate

HERE = Path(__file__).resolve().parent
OUT = HERE.parents[1] / "results" / "lmeval"
TRAIN = ["--model.mixer=mamba", "--model.d_model=64", "--model.n_layers=2", "--model.d_conv=4",
         "--data.seq_len=16", "--data.tokens_per_step=2048", "--train.steps=300",
         "--train.threads=1", "--train.checkpoint_every=300"]  # fmt: skip
N_QUESTIONS, CONTEXT, ANSWER, N_DOCS, DOC_BYTES = 200, 128, 8, 24, 8192


def test_documents() -> list[str]:
    corpus = load_corpus("python-stdlib", ByteTokenizer(), "test")
    tokens = np.asarray(corpus.tokens)
    bounds = list(corpus.doc_starts) + [len(tokens)]
    return [bytes(tokens[a + 1 : b].astype(np.uint8)).decode("utf-8", "replace")
            for a, b in zip(bounds[:-1], bounds[1:])]  # fmt: skip


def write_tasks(folder: Path, docs: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    text = "".join(docs)
    questions = []
    while len(questions) < N_QUESTIONS:
        i = int(rng.integers(CONTEXT, len(text) - ANSWER))
        answer = text[i : i + ANSWER]
        others = [text[j : j + ANSWER] for j in rng.integers(0, len(text) - ANSWER, 3)]
        if len({answer, *others}) < 4:
            continue
        choices = [answer, *others]
        order = rng.permutation(4).tolist()
        questions.append({"context": text[i - CONTEXT : i],
                          "choices": [choices[k] for k in order], "label": order.index(0)})  # fmt: skip
    long_docs = [d[:DOC_BYTES] for d in docs if len(d) >= DOC_BYTES][:N_DOCS]
    for name, rows in (("next", questions), ("docs", [{"text": d} for d in long_docs])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    head = "dataset_path: json\ntest_split: test\ndataset_kwargs:\n  data_files:\n    test: "
    (folder / "stdlib_next.yaml").write_text(
        f"task: stdlib_next\n{head}{folder / 'next.jsonl'}\noutput_type: multiple_choice\n"
        "doc_to_text: '{{context}}'\ndoc_to_target: label\ndoc_to_choice: '{{choices}}'\n"
        "target_delimiter: ''\nmetric_list:\n"
        "  - {metric: acc, aggregation: mean, higher_is_better: true}\n"
    )
    (folder / "stdlib_ppl.yaml").write_text(
        f"task: stdlib_ppl\n{head}{folder / 'docs.jsonl'}\noutput_type: loglikelihood_rolling\n"
        "doc_to_text: ''\ndoc_to_target: '{{text}}'\nmetric_list:\n  - metric: bits_per_byte\n"
    )


# the same resampled documents / questions for every model: the bootstraps are paired
IDX = {"docs": None, "questions": None}


def per_item(out: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-document log-likelihoods and byte counts; per-question correctness."""
    ppl = sorted(out["samples"]["stdlib_ppl"], key=lambda s: s["doc_id"])
    ll = np.array([s["filtered_resps"][0] for s in ppl], dtype=float)
    nbytes = np.array([len(s["doc"]["text"].encode()) for s in ppl], dtype=float)
    mc = sorted(out["samples"]["stdlib_next"], key=lambda s: s["doc_id"])
    return ll, nbytes, np.array([s["acc"] for s in mc], dtype=float)


def bootstrap(ll, nbytes, correct) -> tuple[np.ndarray, np.ndarray]:
    """Bits per byte and accuracy of 2000 resamples (documents, questions) with fixed indices."""
    rng = np.random.default_rng(0)
    if IDX["docs"] is None:
        IDX["docs"] = rng.integers(0, len(ll), (2000, len(ll)))
        IDX["questions"] = rng.integers(0, len(correct), (2000, len(correct)))
    d, q = IDX["docs"], IDX["questions"]
    return -ll[d].sum(1) / nbytes[d].sum(1) / math.log(2), correct[q].mean(1)


def run() -> dict:
    os.environ.setdefault("LONGSSM_CACHE", str(OUT / "cache"))
    os.environ["HF_DATASETS_OFFLINE"] = os.environ["HF_HUB_OFFLINE"] = "1"
    shutil.rmtree(OUT / "runs", ignore_errors=True)
    docs = test_documents()
    write_tasks(OUT / "tasks", docs)
    rows, seconds, boots = {}, {}, {}
    for policy in ("zero", "previous"):
        t0 = time.perf_counter()
        if main(["train", "--out", str(OUT / "runs" / policy), "--quiet", *TRAIN,
                 f"--train.policy={policy}"]) != 0:  # fmt: skip
            raise SystemExit(f"training {policy} failed")
        t1 = time.perf_counter()
        out = evaluate(OUT / "runs" / policy, ["stdlib_next", "stdlib_ppl"],
                       include_path=str(OUT / "tasks"), device="cpu", chunk_size=1024,
                       batch_size=8, progress=False)  # fmt: skip
        seconds[policy] = {"train": round(t1 - t0, 1), "lm_eval": round(time.perf_counter() - t1, 1)}
        acc = out["results"]["stdlib_next"]["acc,none"]
        se = out["results"]["stdlib_next"]["acc_stderr,none"]
        ll, nbytes, correct = per_item(out)
        boots[policy] = bootstrap(ll, nbytes, correct)
        lo, hi = np.percentile(boots[policy][0], [2.5, 97.5])
        rows[policy] = {"acc": acc, "acc_low": acc - 1.96 * se, "acc_high": acc + 1.96 * se,
                        "bits_per_byte": -ll.sum() / nbytes.sum() / math.log(2),
                        "bpb_low": lo, "bpb_high": hi}  # fmt: skip
    (bz, az), (bp, ap) = boots["zero"], boots["previous"]
    paired = {"bpb_zero_minus_previous": np.percentile(bz - bp, [2.5, 50, 97.5]).tolist(),
              "acc_previous_minus_zero": np.percentile(ap - az, [2.5, 50, 97.5]).tolist()}  # fmt: skip
    return {"rows": rows, "paired": paired, "seconds": seconds, "n_questions": N_QUESTIONS,
            "n_docs": len(ll)}  # fmt: skip


def fmt(q) -> str:
    return "[" + ", ".join(f"{v:+.3f}" for v in q) + "]"


def render(s: dict) -> str:
    pb, pa = s["paired"]["bpb_zero_minus_previous"], s["paired"]["acc_previous_minus_zero"]
    lines = ["| trained with | stdlib_next acc [95%] | stdlib_ppl bits/byte [95%] | seconds (train, lm-eval) |",
             "|---|---|---|---|"]  # fmt: skip
    for name, r in s["rows"].items():
        t = s["seconds"][name]
        lines.append(f"| {name} | {r['acc']:.3f} [{r['acc_low']:.3f}, {r['acc_high']:.3f}] | "
                     f"{r['bits_per_byte']:.3f} [{r['bpb_low']:.3f}, {r['bpb_high']:.3f}] | "
                     f"{t['train']:.0f}, {t['lm_eval']:.0f} |")  # fmt: skip
    return "\n".join([
        "# lm-evaluation-harness on local tasks (measured)",
        "",
        "Made by `PYTHONPATH=src python docs/results/lmeval_demo.py` (usage:",
        "[docs/pretrained.md](../pretrained.md#lm-evaluation-harness)). Two byte-level Mambas",
        "(d_model 64, 2 layers, 82k parameters) trained 300 steps at T = 16 on python-stdlib,",
        "scored by lm-eval 0.4.13 through `longssm.interop.lmeval` on two tasks written as YAML",
        f"over the corpus's test split: `stdlib_next`, {s['n_questions']} four-way questions (the",
        "8 bytes that follow a 128-byte context vs three 8-byte strings from elsewhere; chance",
        f"0.25), and `stdlib_ppl`, the rolling log-likelihood of {s['n_docs']} whole test",
        "documents cut to 8192 bytes, each scored from a zero state with the state carried",
        "across 1024-token chunks. Intervals: accuracy +- 1.96 lm-eval stderr; bits per byte by a",
        "bootstrap over documents (2000 resamples); differences by the same bootstrap, paired",
        "(both models on the same resampled documents and questions).",
        "",
        *lines,
        "",
        f"Paired differences [2.5%, median, 97.5%]: bits/byte zero - previous {fmt(pb)}; "
        f"accuracy previous - zero {fmt(pa)}.",
        "",
        "What carries over: the harness runs our models unchanged and its numbers agree with",
        "ours (the tests check its byte perplexity against our sums to 1e-9). Documents 512 times",
        "longer than the training length are where zero-initialised training is expected to",
        "suffer and `previous` not (the LongSSM claim); a paired interval that excludes 0 is the",
        "evidence of a difference, one that includes 0 is none. The intervals cover the choice",
        "of documents and questions, not training noise (one seed per policy). The",
        "multiple-choice task reads 128-byte contexts, so it measures short-context modelling,",
        "not length extension. These are toy models; the paper evaluates 130m+ parameter",
        "models, and not on lm-eval's zero-shot tasks.",
        "",
    ])


if __name__ == "__main__":
    summary = run()
    (HERE / "lmeval.json").write_text(json.dumps(summary, indent=1) + "\n")
    (HERE / "lmeval.md").write_text(render(summary))
    print(render(summary))
