"""`overfill` as an lm-evaluation-harness model: benchmarks scored two-stage, the way OverFill serves.

Importing this module registers the model under the name `overfill` (lm-eval 0.4 has no plugin discovery, so a
third-party model exists only in a process that imported it: `overfill lm-eval ...` is lm-eval's own CLI run that
way; in Python, `import overfill.lm_eval_model` before `lm_eval.simple_evaluate(model="overfill", ...)`).

Model args (`--model_args key=value,...`):
    model          the full model: a local Hugging Face directory or `smollm2-135m` (default)
    decoder        a decoder directory (`overfill prune` / `overfill train`), or `default`; optional in mode full,
                   and for `smollm2-135m`, which falls back to its default decoder
    mode           overfill (default) | full | pruned
    refresh_every  overfill mode: every N decoder tokens the full model re-reads them and its KV replaces the
                   decoder's (prefill refresh), in generation and in scoring alike; 0 (default) is off
    batch_size     requests per forward (default 8; lm-eval's --batch_size sets it; 'auto' is not supported)
    max_length     context window in tokens (default: the model's max_position_embeddings)
    max_gen_toks   generation budget when a task sets none (default 256)
    dtype, device  auto | float32 | bfloat16 | float16, and cpu | cuda[:N] (default: cuda when there is one; a CUDA
                   device asked for on a machine without one, as lm-eval's default cuda:0, falls back to cpu)
    seed           sampled generations: request i of a call draws with seed + i (greedy ignores it)

What each request means in mode overfill (the two-stage path of docs/architecture.md):
    generate_until         OverFill generation itself (`TwoStageEngine`): the full model prefills the context and
                           picks the first token, the decoder continues on the full model's KV. A row stops at EOS,
                           at max_gen_toks, or as soon as its text contains one of the task's `until` strings; the
                           text returned is cut before the first of them. Sampling follows temperature / top_p.
    loglikelihood          log p(continuation | context) along the path generation takes: the full model prefills
                           the context, and its logits at the last context token score continuation token 0 (in
                           OverFill generation that token comes from the full model); the decoder, teacher-forced on
                           continuation tokens 0..m-2 on top of the full model's KV (the OverFill training forward),
                           scores tokens 1..m-1. is_greedy: every continuation token is the argmax where it is scored.
    loglikelihood_rolling  the harness's disjoint windows of at most max_length tokens, each one scored as a
                           loglikelihood request: the full model reads the window's context (the prefix token, or the
                           tokens before the window) and scores the window's first token; the decoder scores the rest
                           on its own KV. The document's log-likelihood is the sum over its windows.
Mode full scores all of it with the full model, mode pruned with the decoder alone (prefill included).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from tqdm import tqdm

from overfill.engine.generate import Mode
from overfill.engine.kv_cache import KVCache
from overfill.engine.loader import default_decoder_arg, load_engine
from overfill.engine.sampling_params import SamplingParams
from overfill.engine.step import ModelStep, right_pad

try:
    import lm_eval.models  # noqa: F401  the built-in models first: get_model() adds them only to an empty registry
    from lm_eval import utils as lm_eval_utils
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.models.utils import normalize_gen_kwargs
except ImportError as e:
    raise ImportError("the overfill lm-eval model needs lm-eval: pip install 'overfill[lmeval]'") from e

log = logging.getLogger(__name__)

MODES = tuple(m.value for m in Mode)
GEN_KWARGS = ("until", "max_gen_toks", "do_sample", "temperature", "top_p")  # what generate_until honours
MAX_LOGIT_TOKENS = 1024  # (rows x positions) of full-vocabulary logits per scoring forward: bounds memory at 1024 x V


@dataclass(frozen=True)
class ScoreRequest:
    """One loglikelihood question in tokens: log p(continuation | context); both non-empty."""

    context: list[int]
    continuation: list[int]


@register_model("overfill")
class OverFillLM(TemplateLM):
    """The two-stage engine behind lm-eval's three request types; see the module docstring for what each means."""

    def __init__(self, model: str = "smollm2-135m", decoder: str | None = None, mode: str = "overfill",
                 refresh_every: int = 0, batch_size: int | str = 8, max_length: int | None = None,
                 max_gen_toks: int = 256, dtype: str = "auto", device: str | None = None, seed: int = 1234,
                 max_batch_size: int | None = None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"model_args: mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = Mode(mode)
        self.refresh_every = _non_negative_int("model_args: refresh_every", refresh_every)
        if self.refresh_every and self.mode is not Mode.OVERFILL:
            raise ValueError(f"model_args: refresh_every is only meaningful in mode overfill, got mode {mode!r}")
        self.batch_size = _positive_int("model_args: batch_size", batch_size)
        self.max_gen_toks = _positive_int("model_args: max_gen_toks", max_gen_toks)
        self.seed = _non_negative_int("model_args: seed", seed)
        del max_batch_size  # lm-eval passes it for its auto batch sizing, which this model does not do

        model, decoder = str(model), None if decoder is None else str(decoder)
        if self.mode is not Mode.FULL and default_decoder_arg(model, decoder) is None:
            raise ValueError(f"model_args: mode {mode} needs decoder=DIR (a directory from `overfill prune` or "
                             f"`overfill train`), or decoder=default")
        self._device = _resolve_device(device)
        self.loaded = load_engine(model, decoder, [self.mode], dtype=str(dtype), device=self._device)
        self.engine = self.loaded.engine
        self.tokenizer = self.loaded.tokenizer
        reference = self.engine.full or self.engine.decoder
        self._max_length = (_positive_int("model_args: max_length", max_length) if max_length is not None
                            else int(getattr(reference.config, "max_position_embeddings", 2048)))
        if self.tokenizer.eos_token_id is None:
            raise ValueError(f"model_args: the tokenizer of {self.loaded.model_path} has no eos_token")

    # ---- what the harness asks of a TemplateLM ------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """Conditions an empty context: BOS where the tokenizer has one, else EOS (as lm-eval's HF model)."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return str(self.loaded.model_path).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """None: the tokenizer's own special tokens, unless the text already starts with BOS (a chat template's)."""
        if add_special_tokens is None:
            bos = self.tokenizer.bos_token
            add_special_tokens = not (bos and string.startswith(bos))
        return self.tokenizer(string, add_special_tokens=add_special_tokens)["input_ids"]

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """`--apply_chat_template`: the model's own template, as `overfill generate --chat` renders prompts."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"--apply_chat_template: the tokenizer of {self.loaded.model_path} has no chat template")
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    def get_model_info(self) -> dict:
        """Recorded by lm-eval in the results' config: what exactly was evaluated."""
        return {"overfill_mode": self.mode.value, "overfill_refresh_every": self.refresh_every,
                "model_path": str(self.loaded.model_path),
                "decoder_path": None if self.loaded.decoder_path is None else str(self.loaded.decoder_path),
                "decoder_parameters": None if self.engine.decoder is None else self.engine.decoder.num_parameters}

    # ---- loglikelihood --------------------------------------------------------------------------------------------

    def _loglikelihood_tokens(self, requests: list[tuple[tuple[str, str] | None, list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(cache key or None, context ids, continuation ids) -> (sum of continuation log-probs, is_greedy)."""
        scored = self.score([self._fit(context, continuation, key)
                             for key, context, continuation in requests], disable_tqdm)
        for (key, _, _), answer in zip(requests, scored):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
        return scored

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each document in the harness's disjoint windows (context_len 1), every window scored two-stage."""
        windows, owners = [], []
        for index, request in enumerate(requests):
            (text,) = request.args[:1]
            token_windows = lm_eval_utils.get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                context_len=1)
            for context, continuation in map(lm_eval_utils.make_disjoint_window, token_windows):
                windows.append(ScoreRequest(context, continuation))
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self.score(windows, disable_tqdm)):
            totals[owner] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args[:1], total)
        return totals

    def _fit(self, context: list[int], continuation: list[int], key) -> ScoreRequest:
        """Left-truncate the context so that context + continuation[:-1] (what the models read) fits max_length."""
        if not continuation:
            raise ValueError(f"loglikelihood request {key!r}: the continuation is empty (nothing to score)")
        if len(continuation) > self.max_length:
            raise ValueError(f"loglikelihood request {key!r}: the continuation has {len(continuation)} tokens, more "
                             f"than max_length={self.max_length}")
        return ScoreRequest(context[-(self.max_length + 1 - len(continuation)):], continuation)

    def score(self, requests: list[ScoreRequest], disable_tqdm: bool = True) -> list[tuple[float, bool]]:
        """(log p(continuation | context), is_greedy) per request, in batches of similar length."""
        for index, request in enumerate(requests):
            if not request.context or not request.continuation:
                raise ValueError(f"score request {index}: context and continuation must both be non-empty")
        order = sorted(range(len(requests)),
                       key=lambda i: -(len(requests[i].context) + len(requests[i].continuation)))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        starts = range(0, len(order), self.batch_size)
        for start in tqdm(starts, desc=f"overfill loglikelihood ({self.mode.value})", disable=disable_tqdm):
            picked = order[start:start + self.batch_size]
            for index, result in zip(picked, self._score_batch([requests[i] for i in picked])):
                results[index] = result
        return results

    def _score_batch(self, batch: list[ScoreRequest]) -> list[tuple[float, bool]]:
        prefill_runner, score_runner = self.engine.runners(self.mode)
        cache = self.engine.new_cache(len(batch), max(len(r.context) + len(r.continuation) - 1 for r in batch))
        prefill, scorer = ModelStep(prefill_runner, cache), ModelStep(score_runner, cache)
        slots = cache.allocate(len(batch))
        logprobs = [0.0] * len(batch)
        greedy = [True] * len(batch)

        def add(rows: list[int], logits: torch.Tensor, targets: list[list[int]]) -> None:
            """logits [R, T, V] at each row's first len(targets[r]) positions score targets[r]."""
            target_ids, valid = right_pad(targets, self.engine.device)                    # [R, T] each
            token_logprobs = torch.log_softmax(logits, dim=-1).gather(-1, target_ids[..., None])[..., 0]  # [R, T]
            sums = (token_logprobs.double() * valid).sum(dim=1).tolist()                 # [R]
            hits = ((logits.argmax(dim=-1) == target_ids) | ~valid).all(dim=1).tolist()  # [R]
            for r, row in enumerate(rows):
                logprobs[row] += sums[r]
                greedy[row] = greedy[row] and hits[r]

        try:
            # 1) Prefill every context (right padded); its last-token logits score continuation token 0.
            logits = prefill.extend(slots, [r.context for r in batch])                    # [B, V]
            add(list(range(len(batch))), logits[:, None], [r.continuation[:1] for r in batch])

            # 2) Teacher forcing on the same KV: input continuation[j] scores continuation[j + 1], in chunks that
            #    bound the logits' memory (a chunk is also the refresh period: refreshes land where generation's do).
            inputs = [r.continuation[:-1] for r in batch]
            chunk = self.refresh_every or max(1, MAX_LOGIT_TOKENS // len(batch))
            for begin in range(0, max(len(i) for i in inputs), chunk):
                rows = [b for b, i in enumerate(inputs) if len(i) > begin]
                pieces = [inputs[b][begin:begin + chunk] for b in rows]
                row_slots = [slots[b] for b in rows]
                logits = scorer.extend(row_slots, pieces, all_logits=True)                  # [R, T, V]
                add(rows, logits, [batch[b].continuation[begin + 1:begin + 1 + len(p)] for b, p in zip(rows, pieces)])
                if self.refresh_every:
                    self._refresh(cache, row_slots, pieces)
        finally:
            cache.free(slots)
        return list(zip(logprobs, greedy))

    def _refresh(self, cache: KVCache, slots: list[int], pieces: list[list[int]]) -> None:
        """The full model rewrites the KV the decoder just wrote for `pieces` (as `TwoStageEngine` refreshes)."""
        for slot, piece in zip(slots, pieces):
            cache.lengths[slot] -= len(piece)
        ModelStep(self.engine.full, cache).extend(slots, pieces)

    # ---- generate_until -------------------------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Two-stage generation per request, batched by prompt length; text cut before the first stop string."""
        prompts, params, stops = [], [], []
        for index, request in enumerate(requests):
            context, gen_kwargs = request.args[0], request.args[1]
            prompt, sampling, until = self._generation_request(context, gen_kwargs, self.seed + index)
            prompts.append(prompt)
            params.append(sampling)
            stops.append(until)

        order = sorted(range(len(requests)), key=lambda i: -len(prompts[i]))
        texts: list[str | None] = [None] * len(requests)
        starts = range(0, len(order), self.batch_size)
        for start in tqdm(starts, desc=f"overfill generate ({self.mode.value})", disable=disable_tqdm):
            picked = order[start:start + self.batch_size]
            generated: list[list[int]] = [[] for _ in picked]

            def reached_stop(row: int, token: int) -> bool:
                generated[row].append(token)
                until = stops[picked[row]]
                return bool(until) and _cut_at_stop(self.tok_decode(generated[row]), until) is not None

            outputs = self.engine.generate([prompts[i] for i in picked], [params[i] for i in picked], self.mode,
                                           on_token=reached_stop, refresh_every=self.refresh_every)
            for index, output in zip(picked, outputs):
                text = self.tok_decode(output.token_ids)
                cut = _cut_at_stop(text, stops[index])
                texts[index] = text if cut is None else text[:cut]
                self.cache_hook.add_partial("generate_until", requests[index].args[:2], texts[index])
        return texts

    def _generation_request(self, context: str, gen_kwargs: dict, seed: int
                            ) -> tuple[list[int], SamplingParams, list[str]]:
        unknown = sorted(set(gen_kwargs) - set(GEN_KWARGS))
        if unknown:
            raise ValueError(f"generation_kwargs {', '.join(map(repr, unknown))} not supported by the overfill model "
                             f"(supported: {', '.join(GEN_KWARGS)})")
        kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        max_gen_toks = _positive_int("generation_kwargs: max_gen_toks", kwargs["max_gen_toks"])
        if max_gen_toks >= self.max_length:
            raise ValueError(f"generation_kwargs: max_gen_toks={max_gen_toks} leaves no room for the context in "
                             f"max_length={self.max_length}")
        until = [s for s in kwargs["until"] if s]
        if not all(isinstance(s, str) for s in until):
            raise ValueError(f"generation_kwargs: until must be strings, got {kwargs['until']!r}")
        temperature = float(kwargs["temperature"]) if kwargs["do_sample"] else 0.0
        sampling = SamplingParams(temperature=temperature, top_p=float(kwargs.get("top_p", 1.0)), seed=seed,
                                  max_new_tokens=max_gen_toks)
        prompt = self.tok_encode(context)[-(self.max_length - max_gen_toks):] or [self.prefix_token_id]
        return prompt, sampling, until


# ---- helpers --------------------------------------------------------------------------------------------------------


def _cut_at_stop(text: str, until: list[str]) -> int | None:
    """Index of the earliest stop string in `text`, or None."""
    hits = [i for i in (text.find(s) for s in until) if i >= 0]
    return min(hits) if hits else None


def _positive_int(field: str, value) -> int:
    if isinstance(value, bool) or not str(value).isdigit() or int(value) < 1:
        raise ValueError(f"{field} must be a positive integer, got {value!r}")
    return int(value)


def _non_negative_int(field: str, value) -> int:
    if isinstance(value, bool) or not str(value).isdigit():
        raise ValueError(f"{field} must be an integer >= 0, got {value!r}")
    return int(value)


def _resolve_device(device: str | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        log.warning("device %s asked for (lm-eval's default is cuda:0) but CUDA is not available: using cpu", device)
        return "cpu"
    return device
