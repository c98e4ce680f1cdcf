"""A longssm model as an lm-evaluation-harness model (``lm_eval``, optional: ``longssm[lmeval]``).

``LongSSMLM`` implements lm-eval's ``LM`` interface for a longssm run / checkpoint or a local
Hugging Face Mamba directory (anything ``interop.pretrained.load_source`` reads):

    loglikelihood([(context, continuation), ...])  -> [(log p(continuation | context), is_greedy)]
    loglikelihood_rolling([(text,), ...])           -> [log p(text)]
    generate_until([(context, gen_kwargs), ...])    -> [generated text]

Every request is a string, tokenised with the model's own tokeniser and preceded by the
tokeniser's separator (``sep_id``): longssm's streams start every document with it, so it is the
model's beginning-of-sequence token. Sequences of any length run in chunks of ``chunk_size``
tokens with the recurrent state carried from one chunk to the next (memory is set by the chunk,
not by the length; the result equals one pass). A recurrent model has no context window, so
``loglikelihood_rolling`` scores every token once, conditioned on everything before it.

Prefix-state cache (``prefix_cache=True``, the default): ``loglikelihood`` requests that share a
context (the choices of a multiple-choice question) run the context once; its final state and
last logits then score every continuation, the continuations batched with the state repeated
over the batch. The scores equal those of the full sequences (tested to 1e-9 in float64): the
state after a prefix is all a recurrent model keeps of it.

When ``lm_eval`` is importable the class subclasses ``lm_eval.api.model.LM`` and is registered as
``longssm``; ``python -m longssm.interop.lmeval ARGS`` is lm-eval's own command line with that
model registered (the plain ``lm_eval`` script cannot see models of other packages), e.g.

    python -m longssm.interop.lmeval --model longssm --model_args path=RUN,chunk_size=1024 \\
        --tasks my_task --include_path TASKDIR --device cpu

Without ``lm_eval`` the methods take plain tuples (or anything with an ``args`` tuple) and the
class works alone. ``evaluate(path, tasks, ...)`` is the Python entry point to the harness.

Glossary:
    sep        the tokeniser's document separator id, used as BOS
    seq        ``[sep] + tokens``; targets are ``seq[first:]``, each predicted from all before it
    chunk      ``chunk_size`` consecutive input positions run in one forward call
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import torch
from tqdm.auto import tqdm

from longssm.data import Tokenizer, tokenizer_from_dict
from longssm.models import SSMLanguageModel
from longssm.models.state import map_state

try:
    from lm_eval.api.model import LM as _Base
    from lm_eval.api.registry import register_model as _register_model
except ImportError:  # the wrapper works without the harness; only its registry is missing
    _Base, _register_model = object, None

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}  # fmt: skip


def _request_args(request) -> tuple:
    """``Instance.args`` of an lm-eval request, or the request itself when it is a plain tuple."""
    args = getattr(request, "args", request)
    return args if isinstance(args, tuple) else (args,)


def _resolve_device(device) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available; use device=cpu")
    return device


def _flag(value) -> bool:
    """A boolean model argument: lm-eval's command line hands "true" / "false" strings."""
    return value if isinstance(value, bool) else str(value).lower() == "true"


def _positive_int(name: str, value, default: int) -> int:
    # lm-eval hands "auto" or strings from the command line
    if value is None or value == "auto" or str(value).startswith("auto"):
        return default
    try:
        value = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return value


class LongSSMLM(_Base):
    """A longssm language model behind lm-eval's ``LM`` interface.

    Args:
        path: a longssm run / checkpoint directory or a local HF Mamba directory. Give either
            ``path`` or ``model`` + ``tokenizer``.
        model: an ``SSMLanguageModel`` (used as is, in eval mode). tokenizer: its tokeniser.
        device: ``cpu``, ``cuda``, ``cuda:1``; None picks CUDA when present.
        dtype: ``float32`` / ``float64`` / ``bfloat16`` / ``float16``; None keeps the model's.
        chunk_size: tokens per forward call; the state is carried across chunks.
        batch_size: requests scored together (right-padded; a causal model never sees the pad).
        max_batch_size: accepted for lm-eval's interface and ignored.
        max_gen_toks: default cap on generated tokens (a request's ``max_gen_toks`` wins).
        seed: seed of the sampler when a request asks for ``do_sample``.
        progress: show tqdm bars.
        prefix_cache: run a context shared by several ``loglikelihood`` requests once (see the
            module docstring); False scores every request's full sequence.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, model: SSMLanguageModel | None = None,
                 tokenizer: Tokenizer | None = None, device=None, dtype: str | None = None,
                 chunk_size: int = 1024, batch_size=1, max_batch_size=None,
                 max_gen_toks: int = 256, seed: int = 0, progress: bool = True,
                 prefix_cache: bool = True):  # fmt: skip
        super().__init__()
        if (path is None) == (model is None):
            raise ValueError("give either path=RUN_OR_HF_DIR or model= and tokenizer=")
        if path is not None:
            model, tokenizer = _load(path)
        elif tokenizer is None:
            raise ValueError("model= needs tokenizer= (the tokeniser it was trained with)")
        if tokenizer.vocab_size > model.cfg.vocab_size:
            raise ValueError(
                f"the tokenizer has {tokenizer.vocab_size} ids but the model's embedding has "
                f"{model.cfg.vocab_size} rows (a symbol model cannot read text)"
            )
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self._device = _resolve_device(device)
        model = model.to(self.device) if dtype is None else model.to(self.device, DTYPES[dtype])
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.chunk_size = _positive_int("chunk_size", chunk_size, 1024)
        self.batch_size = _positive_int("batch_size", batch_size, 8)
        self.max_gen_toks = _positive_int("max_gen_toks", max_gen_toks, 256)
        self.seed = int(seed)
        self.progress = _flag(progress)
        self.prefix_cache = _flag(prefix_cache)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def sep_id(self) -> int:
        return self.tokenizer.sep_id

    # -- tokenisation --------------------------------------------------------------------

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of ``context`` and of ``continuation`` after it, as lm-eval's HF model cuts
        them: trailing whitespace of the context moves to the continuation, and the pair is
        encoded as one text when the context's own tokens are a prefix of it."""
        stripped = context.rstrip()
        continuation = context[len(stripped) :] + continuation
        context = stripped
        ctx = list(self.tokenizer.encode(context)) if context else []
        whole = list(self.tokenizer.encode(context + continuation))
        if whole[: len(ctx)] == ctx:
            return ctx, whole[len(ctx) :]
        return ctx, list(self.tokenizer.encode(continuation))

    # -- scoring -------------------------------------------------------------------------

    @torch.inference_mode()
    def score(
        self, seqs: Sequence[Sequence[int]], firsts: Sequence[int]
    ) -> list[tuple[float, bool]]:
        """``(sum of log p(seq[t] | seq[:t]) over t >= first, all those t greedy)`` per sequence.

        The sequences run together, right-padded, in chunks of ``chunk_size`` input positions with
        the state carried; sums are float64. ``first >= 1`` (position 0 is never predicted).
        """
        lengths = [len(s) for s in seqs]
        if any(f < 1 for f in firsts):
            raise ValueError("the first scored position must be >= 1")
        rows, width = len(seqs), max(lengths)
        if width < 2:
            return [(0.0, True)] * rows
        tokens = self._padded(seqs)  # (R, W)
        pos = torch.arange(1, width, device=self.device)  # (W-1,) target positions
        lo = torch.as_tensor(list(firsts), device=self.device)[:, None]
        hi = torch.as_tensor(lengths, device=self.device)[:, None]
        mask = (pos >= lo) & (pos < hi)  # (R, W-1): which targets count
        total = torch.zeros(rows, dtype=torch.float64, device=self.device)
        greedy = torch.ones(rows, dtype=torch.bool, device=self.device)
        self._accumulate(tokens, mask, None, total, greedy)
        return list(zip(total.tolist(), greedy.tolist()))

    def _padded(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        """The sequences right-padded with the separator, (rows, longest), on the device."""
        tokens = torch.full((len(seqs), max(len(s) for s in seqs)), self.sep_id, dtype=torch.long)
        for i, s in enumerate(seqs):
            tokens[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        return tokens.to(self.device)

    def _accumulate(self, tokens, mask, state, total, greedy) -> None:
        """Run tokens (R, W) from ``state`` in chunks of ``chunk_size`` and add to ``total`` (R,)
        the float64 log-probabilities of the targets tokens[:, 1:] that ``mask`` (R, W-1) marks;
        ``greedy`` (R,) stays true where every marked target is the argmax."""
        for a in range(0, tokens.shape[1] - 1, self.chunk_size):
            b = min(a + self.chunk_size, tokens.shape[1] - 1)
            logits, state = self.model(tokens[:, a:b], state)  # (R, c, V)
            if logits.dtype in (torch.float16, torch.bfloat16):
                logits = logits.float()
            target = tokens[:, a + 1 : b + 1]  # (R, c)
            m = mask[:, a:b]
            picked = logits.gather(-1, target[..., None]).squeeze(-1) - logits.logsumexp(-1)
            total += (picked.double() * m).sum(1)
            greedy &= ((logits.argmax(-1) == target) | ~m).all(1)

    @torch.inference_mode()
    def score_after(self, state, last_logits: torch.Tensor, conts: Sequence[Sequence[int]]):
        """``(sum of log p(cont), all greedy)`` per continuation, each following one prefix whose
        final ``state`` (batch 1) and last-position logits (V,) are given: the first token is
        scored with ``last_logits``, the rest by running the continuations (right-padded) from
        the state repeated over the batch, in chunks of ``chunk_size``; sums are float64."""
        if min(len(c) for c in conts) < 1:
            raise ValueError("every continuation needs at least one token")
        rows, tokens = len(conts), self._padded(conts)  # (R, W)
        lengths = torch.as_tensor([len(c) for c in conts], device=self.device)[:, None]
        pos = torch.arange(1, tokens.shape[1], device=self.device)  # (W-1,) target positions
        first = last_logits.to(torch.promote_types(last_logits.dtype, torch.float32))  # (V,)
        total = first.log_softmax(-1)[tokens[:, 0]].double()  # (R,): log p(cont[0])
        greedy = tokens[:, 0] == first.argmax()
        state = map_state(state, lambda t: t.expand(rows, *t.shape[1:]).contiguous())
        self._accumulate(tokens, pos < lengths, state, total, greedy)
        return list(zip(total.tolist(), greedy.tolist()))

    def _score_shared(self, groups: dict, conts: list, out: list, bar) -> None:
        """Fill ``out[i]`` for the requests of each ``prefix -> [i, ...]`` group: the prefix once
        (``prefill``), then its continuations ``conts[i]`` from its state, ``batch_size`` at a
        time."""
        for prefix, members in groups.items():
            last_logits, state = self.prefill(prefix)
            for k in range(0, len(members), self.batch_size):
                batch = members[k : k + self.batch_size]
                results = self.score_after(state, last_logits, [conts[i] for i in batch])
                for i, result in zip(batch, results):
                    out[i] = result
                bar.update(len(batch))

    def _score_all(self, items: list[tuple[list[int], int]], desc: str, disable: bool):
        """``score`` over many ``(seq, first)``, batched longest first, in the original order."""
        order = sorted(range(len(items)), key=lambda i: -len(items[i][0]))
        out: list[tuple[float, bool] | None] = [None] * len(items)
        bar = tqdm(total=len(items), desc=desc, disable=disable or not self.progress)
        for k in range(0, len(order), self.batch_size):
            batch = order[k : k + self.batch_size]
            results = self.score([items[i][0] for i in batch], [items[i][1] for i in batch])
            for i, result in zip(batch, results):
                out[i] = result
            bar.update(len(batch))
        bar.close()
        return out

    def _cache(self, kind: str, args: tuple, result) -> None:
        hook = getattr(self, "cache_hook", None)
        if hook is not None:
            hook.add_partial(kind, args, result)

    def loglikelihood(
        self, requests: Iterable, disable_tqdm: bool = False
    ) -> list[tuple[float, bool]]:
        """``(log p(continuation | context), is_greedy)`` for every ``(context, continuation)``."""
        args = [_request_args(r) for r in requests]
        pairs = [self.encode_pair(*a[:2]) for a in args]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (ctx, _) in enumerate(pairs):
            groups.setdefault((self.sep_id, *ctx), []).append(i)
        # a context shared by several requests runs once (an empty continuation scores 0 alone)
        shared = {p: m for p, m in groups.items()
                  if self.prefix_cache and len(m) > 1 and all(pairs[i][1] for i in m)}  # fmt: skip
        alone = [i for p, m in groups.items() if p not in shared for i in m]
        items = [([self.sep_id, *pairs[i][0], *pairs[i][1]], 1 + len(pairs[i][0])) for i in alone]
        results: list = [None] * len(args)
        for i, result in zip(alone, self._score_all(items, "loglikelihood", disable_tqdm)):
            results[i] = result
        if shared:
            bar = tqdm(total=sum(len(m) for m in shared.values()), desc="loglikelihood (shared)",
                       disable=disable_tqdm or not self.progress)  # fmt: skip
            self._score_shared(shared, [cont for _, cont in pairs], results, bar)
            bar.close()
        for a, r in zip(args, results):
            self._cache("loglikelihood", a[:2], r)
        return results

    def loglikelihood_rolling(self, requests: Iterable, disable_tqdm: bool = False) -> list[float]:
        """``log p(text)`` for every ``(text,)``: every token scored once given all before it
        (and the separator), whatever the length, in chunks with the state carried."""
        args = [_request_args(r) for r in requests]
        items = [([self.sep_id, *self.tokenizer.encode(a[0])], 1) for a in args]
        results = [r[0] for r in self._score_all(items, "loglikelihood_rolling", disable_tqdm)]
        for a, r in zip(args, results):
            self._cache("loglikelihood_rolling", a[:1], r)
        return results

    # -- generation ----------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self, ids: Sequence[int]):
        """Run ``ids`` (batch 1) in chunks; returns the last position's logits (V,) and the state."""
        tokens = torch.as_tensor([list(ids)], dtype=torch.long, device=self.device)  # (1, N)
        state = None
        for a in range(0, tokens.shape[1], self.chunk_size):
            logits, state = self.model(tokens[:, a : a + self.chunk_size], state)
        return logits[0, -1], state

    @torch.inference_mode()
    def generate_text(self, context: str, until: Sequence[str] = (), max_gen_toks: int | None = None,
                      temperature: float = 0.0, top_k: int | None = None,
                      generator: torch.Generator | None = None) -> str:  # fmt: skip
        """Continue ``context`` token by token (``model.step``) until a stop string appears (it is
        cut off, as is everything after it), the separator is drawn, or ``max_gen_toks`` tokens.
        ``temperature`` 0 is greedy."""
        limit = self.max_gen_toks if max_gen_toks is None else int(max_gen_toks)
        stops = [s for s in until if s]
        logits, state = self.prefill([self.sep_id, *self.tokenizer.encode(context)])
        out: list[int] = []
        text = ""
        while len(out) < limit:
            token = _pick(logits, temperature, top_k, generator)
            if token == self.sep_id:
                break
            out.append(token)
            text = self.tokenizer.decode(out)
            cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                return text[:cut]
            if len(out) < limit:
                step = torch.tensor([token], device=self.device)
                logits, state = self.model.step(step, state)
                logits = logits[0]
        return text

    def generate_until(self, requests: Iterable, disable_tqdm: bool = False) -> list[str]:
        """Generated text for every ``(context, gen_kwargs)``; ``gen_kwargs`` may hold ``until``
        (a string or list), ``max_gen_toks``, ``do_sample``, ``temperature`` and ``top_k``.
        Greedy unless ``do_sample`` is true and the temperature positive."""
        args = [_request_args(r) for r in requests]
        generator = torch.Generator().manual_seed(self.seed)
        out = []
        for a in tqdm(args, desc="generate_until", disable=disable_tqdm or not self.progress):
            context, kwargs = a[0], dict(a[1] if len(a) > 1 and a[1] else {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            temperature = float(kwargs.get("temperature", 1.0 if kwargs.get("do_sample") else 0.0))
            if not kwargs.get("do_sample"):
                temperature = 0.0
            text = self.generate_text(context, until, kwargs.get("max_gen_toks"), temperature,
                                      kwargs.get("top_k"), generator)  # fmt: skip
            self._cache("generate_until", a, text)
            out.append(text)
        return out


def _pick(logits: torch.Tensor, temperature: float, top_k: int | None, generator) -> int:
    """The next token id from logits (V,): argmax at temperature 0, else a sample."""
    if temperature <= 0:
        return int(logits.argmax())
    scaled = logits.float().cpu() / temperature
    if top_k:
        kth = scaled.topk(min(int(top_k), scaled.shape[-1])).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    return int(torch.multinomial(torch.softmax(scaled, -1), 1, generator=generator))


def _load(path) -> tuple[SSMLanguageModel, Tokenizer]:
    """The model and tokeniser of a run / checkpoint or HF directory."""
    from longssm.interop.pretrained import load_source

    model, where, meta = load_source(path)
    if not isinstance(meta.get("tokenizer"), dict):
        raise ValueError(f"{where} has no tokenizer (an HF directory needs its tokenizer.json)")
    return model, tokenizer_from_dict(meta["tokenizer"])


if _register_model is not None:
    from lm_eval.api.registry import model_registry as _models

    # ``python -m longssm.interop.lmeval`` runs this file as __main__ and may import it again
    if "longssm" not in _models:
        LongSSMLM = _register_model("longssm")(LongSSMLM)


def _harness():
    try:
        import lm_eval
    except ImportError:
        raise ValueError(
            "lm-evaluation-harness is not installed: pip install 'longssm[lmeval]'"
        ) from None
    return lm_eval


def evaluate(
    path: str | os.PathLike,
    tasks: Sequence[str],
    include_path: str | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    **model_args,
) -> dict:
    """Run lm-eval ``tasks`` on the model at ``path``; returns ``simple_evaluate``'s dict.

    ``include_path``: a folder of task YAML files (local tasks; the hub is never reached for a
    task whose data are local files). ``model_args`` go to ``LongSSMLM`` (device, chunk_size,
    batch_size, dtype, ...).
    """
    lm_eval = _harness()
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    lm = LongSSMLM(path, **model_args)
    return lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager,
                                   limit=limit, num_fewshot=num_fewshot)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    """lm-eval's command line with ``longssm`` registered (``python -m longssm.interop.lmeval``)."""
    import sys

    _harness()
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
