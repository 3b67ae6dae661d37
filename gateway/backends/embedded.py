"""The embedded backend: a Hugging Face causal LM loaded in this process.

Everything that touches the model runs in one dedicated worker thread: loading, prefill and
the decode loop. The model is not re-entrant, so requests queue there; the event loop only
awaits futures and, for streams, reads deltas from an asyncio queue that the worker feeds.

LoRA adapters (registry versions) are loaded next to the base with PEFT, into the same model,
on the same worker thread. PEFT's adapter switch is model-wide state, so it is safe only because
each generation runs start to end on that one thread: ``_decode`` selects the request's adapter
(or disables adapters for the base) right before its prefill, and no other request's tokens are
computed until it returns. Loading and unloading run on that thread too, between generations.

Decoding is our own loop over a KV cache rather than ``model.generate``: it gives real
token-by-token streaming for every choice, stop strings checked as text grows, a per-request
``torch.Generator`` (seeded sampling that no other thread's RNG use can disturb) and
cancellation between tokens when a client goes away or the backend closes.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
import platform
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, aclosing, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jinja2 import TemplateError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from gateway.backends import templates
from gateway.backends.base import (
    ChatRequest,
    Choice,
    CompletionRequest,
    CompletionResult,
    FinishReason,
    ModelBackend,
    StreamDelta,
)
from gateway.errors import BackendUnavailable, Unprocessable

logger = logging.getLogger(__name__)

# Weight files in the order transformers would look for them; sharded names are globbed.
_WEIGHT_PATTERNS = (
    "model.safetensors",
    "model-*-of-*.safetensors",
    "pytorch_model.bin",
    "pytorch_model-*-of-*.bin",
)
_HASH_CHUNK = 1 << 20
_DEFAULT_CONTEXT = 2048
# The share of the prompt budget the suffix may always claim when both sides are too long:
# the text right before the cursor matters most, but FIM needs some of what follows.
_SUFFIX_SHARE = 4


@dataclass(slots=True)
class _Loaded:
    """Everything start() produced; replaced as a whole, so a request sees one consistent model."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    family: str
    version: str
    context_tokens: int
    stop_token_ids: frozenset[int]
    max_token_chars: int
    parameters: int


@dataclass(slots=True)
class _Prompt:
    text: str
    ids: list[int]


@dataclass(slots=True)
class _Sampling:
    max_tokens: int
    temperature: float
    top_p: float
    n: int
    stop: tuple[str, ...]
    seed: int | None
    adapter: str | None = None  # a loaded adapter's name; None = the base model


@dataclass(slots=True)
class _Generation:
    texts: list[str]  # one per choice index
    finish_reasons: list[FinishReason]
    completion_tokens: int
    cancelled: bool = False


@dataclass(slots=True)
class _ChoiceText:
    """Incremental text of one decoded row: holds back what could still become a stop string."""

    tokenizer: PreTrainedTokenizerBase
    stop: tuple[str, ...]
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0  # characters of text already handed out
    stopped: bool = False

    def push(self, token_id: int) -> str:
        """Add a token; return the text that is now safe to hand out."""
        self.tokens.append(token_id)
        # Decode the whole row each time: byte-level pieces only become characters in context.
        # No space clean-up: it rewrites earlier text (" ." -> ".") and corrupts code.
        self.text = self.tokenizer.decode(
            self.tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        cut = _first_stop(self.text, self.stop)
        if cut is not None:
            self.text = self.text[:cut]
            self.stopped = True
            return self._take(len(self.text))
        safe = len(self.text) - _stop_prefix_len(self.text, self.stop)
        # A trailing replacement character is an incomplete UTF-8 sequence: wait for the rest.
        while safe > self.sent and self.text[safe - 1] == "\ufffd":
            safe -= 1
        return self._take(safe)

    def finish(self) -> str:
        return self._take(len(self.text))

    def _take(self, end: int) -> str:
        piece = self.text[self.sent : end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return piece


def _first_stop(text: str, stop: tuple[str, ...]) -> int | None:
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return min(hits) if hits else None


def _stop_prefix_len(text: str, stop: tuple[str, ...]) -> int:
    """Length of the longest end of text that is the start of some stop string."""
    longest = 0
    for s in stop:
        for size in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:size]):
                longest = size
                break
    return longest


def _cpu_brand() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: platform.processor() below is the portable answer
    return platform.processor() or "unknown"


def _weight_files(model_dir: Path) -> list[Path]:
    for pattern in _WEIGHT_PATTERNS:
        found = sorted(model_dir.glob(pattern))
        if found:
            return found
    return []


def _content_hash(files: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as weights:
            while chunk := weights.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()[:12]


class EmbeddedBackend(ModelBackend):
    """Serves a local Hugging Face model directory (no network: ``local_files_only``).

    ``repetition_penalty`` (>= 1.0) divides the logits of tokens this choice already produced
    (prompt tokens are exempt: code legitimately repeats its identifiers). Tiny models loop
    under greedy decoding; about 1.2-1.5 breaks that, 1.0 turns it off.

    With ``temperature == 0`` and ``n > 1`` the backend decodes once and returns ``n``
    identical choices, as OpenAI does: greedy decoding has one answer.
    """

    name = "embedded"
    supports_adapters = True

    def __init__(
        self,
        model_dir: Path,
        *,
        model_name: str,
        prompt_family: str = "auto",
        device: str = "auto",
        max_context_tokens: int | None = None,
        repetition_penalty: float = 1.0,
        torch_threads: int | None = None,
    ) -> None:
        if prompt_family != "auto" and prompt_family not in templates.FAMILIES:
            raise ValueError(f"prompt_family: unknown family {prompt_family!r}")
        if device != "auto":
            try:
                torch.device(device)
            except RuntimeError as exc:
                raise ValueError(f"device: {device!r} is not a torch device") from exc
        if max_context_tokens is not None and max_context_tokens < 2:
            raise ValueError("max_context_tokens: must be at least 2")
        if repetition_penalty < 1.0:
            raise ValueError("repetition_penalty: must be >= 1.0")
        if torch_threads is not None and torch_threads < 1:
            raise ValueError("torch_threads: must be at least 1")
        self.torch_threads = torch_threads or max(1, (os.cpu_count() or 2) // 2)
        self.model_dir = Path(model_dir)
        self.model_name = model_name
        self.prompt_family = prompt_family
        self.device = device
        self.max_context_tokens = max_context_tokens
        self.repetition_penalty = repetition_penalty
        self._loaded: _Loaded | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._active: set[threading.Event] = set()  # cancel flags of submitted generations
        # The PEFT wrapper once the first adapter is loaded; touched only on the worker thread.
        self._peft: Any = None
        self._adapters: dict[str, Path] = {}  # replaced as a whole on the worker thread
        self._cpu_info = _cpu_brand()
        self._cuda_devices = [
            torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
        ]

    # lifecycle

    @property
    def model_version(self) -> str:
        return self._require().version

    @property
    def template_name(self) -> str:
        """The completion template in use, to record with each suggestion."""
        return templates.template_name(self._require().family)

    @property
    def context_tokens(self) -> int:
        """The context window prompts are fitted into (prompt + max_tokens)."""
        return self._require().context_tokens

    async def start(self) -> None:
        if self._loaded is not None:
            return
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gristmill-embedded")
        torch.set_num_threads(self.torch_threads)  # process-wide; the gateway trains nothing
        try:
            loaded = await asyncio.get_running_loop().run_in_executor(executor, self._load)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._executor, self._loaded = executor, loaded

    async def close(self) -> None:
        loaded, self._loaded = self._loaded, None
        executor, self._executor = self._executor, None
        for cancel in self._active:
            cancel.set()  # the running decode stops at its next token; queued ones at once
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True)
        self._peft, self._adapters = None, {}
        if loaded is not None:
            on_cuda = loaded.device.type == "cuda"
            del loaded
            gc.collect()
            if on_cuda:
                torch.cuda.empty_cache()

    # adapters

    def adapters(self) -> list[str]:
        return sorted(self._adapters)

    async def load_adapter(self, name: str, path: Path) -> None:
        """Load a PEFT LoRA adapter directory next to the base (no restart, idempotent).
        Raises BackendUnavailable naming the adapter when PEFT cannot load it."""
        await self._on_worker(self._load_adapter, name, Path(path))

    async def unload_adapter(self, name: str) -> None:
        await self._on_worker(self._unload_adapter, name)

    async def _on_worker(self, fn: Callable[..., None], *args: Any) -> None:
        executor = self._executor
        if executor is None:
            raise BackendUnavailable(f"embedded model from {self.model_dir} is not loaded")
        await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    def _load_adapter(self, name: str, path: Path) -> None:
        loaded = self._require()
        if name in self._adapters:
            return
        if not (path / "adapter_config.json").is_file():
            raise BackendUnavailable(f"adapter {name}: {path} is not a PEFT adapter directory")
        try:
            from peft import PeftModel

            with warnings.catch_warnings():
                # peft reads transformers 5's deprecated is_gradient_checkpointing alias
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
                if self._peft is None:
                    self._peft = PeftModel.from_pretrained(
                        loaded.model, path, adapter_name=name, is_trainable=False
                    )
                else:
                    self._peft.load_adapter(path, adapter_name=name, is_trainable=False)
            self._peft.to(loaded.device)
            self._peft.eval()
        except Exception as exc:  # ValueError, KeyError, OSError, safetensors errors, ...
            raise BackendUnavailable(f"adapter {name}: cannot load {path}: {exc}") from exc
        self._adapters = {**self._adapters, name: path}
        logger.info("adapter %s loaded from %s", name, path)

    def _unload_adapter(self, name: str) -> None:
        if name not in self._adapters or self._peft is None:
            return
        remaining = {k: v for k, v in self._adapters.items() if k != name}
        self._adapters = remaining  # requests naming it fail from now on
        if remaining:
            if self._peft.active_adapter == name:  # PEFT warns when deleting the active one
                self._peft.set_adapter(next(iter(remaining)))
            self._peft.delete_adapter(name)
        else:
            # The last adapter: take the LoRA layers out, so the base runs exactly as loaded.
            self._peft.unload()
            self._peft = None
        logger.info("adapter %s unloaded", name)

    def _select_adapter(self, name: str | None) -> AbstractContextManager[Any]:
        """Worker thread only: make the model compute as adapter ``name`` (None: the base)."""
        if name is not None and name not in self._adapters:
            raise BackendUnavailable(f"model version {name} is not loaded (it was just retired?)")
        if self._peft is None:
            return nullcontext()
        if name is None:
            return self._peft.disable_adapter()
        if self._peft.active_adapter != name:
            self._peft.set_adapter(name)
        return nullcontext()

    def _require(self) -> _Loaded:
        if self._loaded is None:
            raise BackendUnavailable(f"embedded model from {self.model_dir} is not loaded")
        return self._loaded

    def _resolve_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable(f"device {self.device!r} requested but CUDA is not available")
        return device

    def _load(self) -> _Loaded:
        path = self.model_dir
        if not path.is_dir():
            raise BackendUnavailable(f"model directory {path} does not exist")
        weights = _weight_files(path)
        if not weights:
            raise BackendUnavailable(f"no model weights (*.safetensors, *.bin) in {path}")
        device = self._resolve_device()
        if device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32  # half precision on CPU is slower and less accurate
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
        except Exception as exc:  # OSError, ValueError, KeyError, safetensors errors, ...
            raise BackendUnavailable(f"cannot load the model in {path}: {exc}") from exc
        if not tokenizer.is_fast:
            raise BackendUnavailable(f"{path}: a fast tokenizer (tokenizer.json) is required")
        model.to(device)
        model.eval()
        vocab = tokenizer.get_vocab()
        family = self.prompt_family
        if family == "auto":
            family = templates.detect_family([*vocab, *tokenizer.all_special_tokens])
        loaded = _Loaded(
            model=model,
            tokenizer=tokenizer,
            device=device,
            family=family,
            version=f"{self.model_name}@{_content_hash(weights)}",
            context_tokens=self._context_tokens(model, tokenizer),
            stop_token_ids=self._stop_ids(model, tokenizer, vocab, family),
            max_token_chars=max((len(t) for t in vocab), default=1),
            parameters=sum(p.numel() for p in model.parameters()),
        )
        logger.info(
            "embedded model loaded: %s from %s on %s (%s parameters, family %s, context %d)",
            loaded.version,
            path,
            device,
            loaded.parameters,
            family,
            loaded.context_tokens,
        )
        return loaded

    def _context_tokens(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
        model_limit = getattr(model.config, "max_position_embeddings", None)
        if not model_limit:
            # transformers uses a huge sentinel when the tokenizer does not know its limit
            tok_limit = tokenizer.model_max_length
            model_limit = tok_limit if tok_limit and tok_limit < 1_000_000 else None
        if self.max_context_tokens is None:
            return int(model_limit or _DEFAULT_CONTEXT)
        return min(self.max_context_tokens, int(model_limit or self.max_context_tokens))

    @staticmethod
    def _stop_ids(
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        vocab: dict[str, int],
        family: str,
    ) -> frozenset[int]:
        ids: set[int] = set()
        for token in templates.stop_tokens(family):
            # SentencePiece vocabularies spell Code Llama's <EOT> as "▁<EOT>"
            for spelling in (token, f"▁{token}"):
                if spelling in vocab:
                    ids.add(vocab[spelling])
        if tokenizer.eos_token_id is not None:
            ids.add(tokenizer.eos_token_id)
        generation_eos = getattr(model.generation_config, "eos_token_id", None)
        if isinstance(generation_eos, int):
            ids.add(generation_eos)
        elif generation_eos:
            ids.update(generation_eos)
        return frozenset(ids)

    # prompts

    def render_completion_prompt(self, request: CompletionRequest) -> str:
        """The FIM prompt after fitting it into the context window (tokenizes the request)."""
        return self._completion_prompt(self._require(), request).text

    def _encode(self, loaded: _Loaded, text: str, *, special: bool) -> list[int]:
        return loaded.tokenizer(text, add_special_tokens=special)["input_ids"]

    def _completion_prompt(self, loaded: _Loaded, request: CompletionRequest) -> _Prompt:
        family = loaded.family
        budget = loaded.context_tokens - request.max_tokens
        overhead = len(
            self._encode(loaded, templates.render_completion(family, "", ""), special=True)
        )
        room = budget - overhead
        if room < 1:
            raise Unprocessable(
                f"max_tokens={request.max_tokens} leaves no room for the prompt in the "
                f"{loaded.context_tokens}-token context window"
            )
        # A token never covers more characters than the longest vocabulary entry, so text
        # beyond this many characters from the cursor cannot fit: skip tokenizing it.
        char_limit = room * loaded.max_token_chars
        prefix = request.prefix[-char_limit:]
        suffix = "" if family == "plain" else (request.suffix or "")[:char_limit]
        text = templates.render_completion(family, prefix, suffix)
        ids = self._encode(loaded, text, special=True)
        if len(ids) > budget:
            prefix, suffix = self._trim_to_room(loaded, prefix, suffix, room)
            text = templates.render_completion(family, prefix, suffix)
            ids = self._encode(loaded, text, special=True)
            # Tokens can merge differently across the template's seams: trim more until it fits.
            while len(ids) > budget and (prefix or suffix):
                excess = len(ids) - budget
                if prefix:
                    prefix = self._drop_tokens(loaded, prefix, excess, from_start=True)
                else:
                    suffix = self._drop_tokens(loaded, suffix, excess, from_start=False)
                text = templates.render_completion(family, prefix, suffix)
                ids = self._encode(loaded, text, special=True)
        return _Prompt(text=text, ids=ids)

    def _trim_to_room(
        self, loaded: _Loaded, prefix: str, suffix: str, room: int
    ) -> tuple[str, str]:
        """Keep the end of the prefix and the start of the suffix, room tokens in all."""
        tok = loaded.tokenizer
        prefix_spans = tok(prefix, add_special_tokens=False, return_offsets_mapping=True)
        suffix_spans = tok(suffix, add_special_tokens=False, return_offsets_mapping=True)
        prefix_offsets = prefix_spans["offset_mapping"]
        suffix_offsets = suffix_spans["offset_mapping"]
        suffix_keep = min(
            len(suffix_offsets), max(room - len(prefix_offsets), room // _SUFFIX_SHARE)
        )
        prefix_keep = min(len(prefix_offsets), room - suffix_keep)
        kept_prefix = prefix[prefix_offsets[-prefix_keep][0] :] if prefix_keep > 0 else ""
        kept_suffix = suffix[: suffix_offsets[suffix_keep - 1][1]] if suffix_keep > 0 else ""
        return kept_prefix, kept_suffix

    @staticmethod
    def _drop_tokens(loaded: _Loaded, text: str, count: int, *, from_start: bool) -> str:
        offsets = loaded.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)[
            "offset_mapping"
        ]
        if count >= len(offsets):
            return ""
        return text[offsets[count][0] :] if from_start else text[: offsets[-count - 1][1]]

    def _chat_prompt(
        self, loaded: _Loaded, request: ChatRequest
    ) -> tuple[_Prompt, tuple[str, ...]]:
        tok = loaded.tokenizer
        if tok.chat_template:
            conversation = [{"role": m.role, "content": m.content} for m in request.messages]
            try:
                text = tok.apply_chat_template(
                    conversation, add_generation_prompt=True, tokenize=False
                )
            except TemplateError as exc:  # templates raise for e.g. roles out of order
                raise Unprocessable(f"messages do not fit the chat template: {exc}") from exc
            ids = self._encode(loaded, text, special=False)  # the template writes its own BOS
            extra_stop: tuple[str, ...] = ()
        else:
            text = templates.render_chat_fallback(request.messages)
            ids = self._encode(loaded, text, special=True)
            extra_stop = templates.CHAT_FALLBACK_STOP
        if len(ids) + request.max_tokens > loaded.context_tokens:
            raise Unprocessable(
                f"the conversation is {len(ids)} tokens; with max_tokens={request.max_tokens} it "
                f"exceeds the {loaded.context_tokens}-token context window"
            )
        return _Prompt(text=text, ids=ids), extra_stop

    # requests

    @staticmethod
    def _sampling(
        request: CompletionRequest | ChatRequest, extra_stop: tuple[str, ...] = ()
    ) -> _Sampling:
        problems = []
        if request.max_tokens < 1:
            problems.append("max_tokens must be at least 1")
        if request.n < 1:
            problems.append("n must be at least 1")
        if request.temperature < 0:
            problems.append("temperature must not be negative")
        if not 0 < request.top_p <= 1:
            problems.append("top_p must be in (0, 1]")
        if problems:
            raise Unprocessable("; ".join(problems))
        return _Sampling(
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            n=request.n,
            stop=tuple(s for s in (*request.stop, *extra_stop) if s),
            seed=request.seed,
            adapter=request.model,
        )

    async def complete(self, request: CompletionRequest) -> CompletionResult:
        loaded = self._require()
        sampling = self._sampling(request)
        prompt = await asyncio.to_thread(self._completion_prompt, loaded, request)
        return await self._result(loaded, prompt, sampling)

    async def chat(self, request: ChatRequest) -> CompletionResult:
        loaded = self._require()
        prompt, extra_stop = await asyncio.to_thread(self._chat_prompt, loaded, request)
        return await self._result(loaded, prompt, self._sampling(request, extra_stop))

    async def stream(self, request: CompletionRequest) -> AsyncIterator[StreamDelta]:
        """Deltas as tokens are decoded; request errors raise on the first iteration."""
        loaded = self._require()
        sampling = self._sampling(request)
        prompt = await asyncio.to_thread(self._completion_prompt, loaded, request)
        async with aclosing(self._stream(loaded, prompt, sampling)) as deltas:
            async for delta in deltas:
                yield delta

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[StreamDelta]:
        loaded = self._require()
        prompt, extra_stop = await asyncio.to_thread(self._chat_prompt, loaded, request)
        sampling = self._sampling(request, extra_stop)
        async with aclosing(self._stream(loaded, prompt, sampling)) as deltas:
            async for delta in deltas:
                yield delta

    async def _result(
        self, loaded: _Loaded, prompt: _Prompt, sampling: _Sampling
    ) -> CompletionResult:
        generation = await self._generate(loaded, prompt, sampling, None, threading.Event())
        return CompletionResult(
            choices=[
                Choice(index=i, text=text, finish_reason=reason)
                for i, (text, reason) in enumerate(
                    zip(generation.texts, generation.finish_reasons, strict=True)
                )
            ],
            model_version=self.version_of(sampling.adapter),
            rendered_prompt=prompt.text,
            prompt_tokens=len(prompt.ids),
            completion_tokens=generation.completion_tokens,
        )

    async def _stream(
        self, loaded: _Loaded, prompt: _Prompt, sampling: _Sampling
    ) -> AsyncIterator[StreamDelta]:
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue[StreamDelta | None] = asyncio.Queue()
        cancel = threading.Event()

        def emit(delta: StreamDelta) -> None:
            if not cancel.is_set():
                loop.call_soon_threadsafe(deltas.put_nowait, delta)

        task = asyncio.ensure_future(self._generate(loaded, prompt, sampling, emit, cancel))
        # Runs on the loop after every delta the worker scheduled before it returned.
        task.add_done_callback(lambda _: deltas.put_nowait(None))
        try:
            while (delta := await deltas.get()) is not None:
                yield delta
            await task  # raises what the generation raised
        finally:
            # The client may have left mid-stream: the worker stops at its next token, and a
            # request still queued is dropped with its cancelled task.
            cancel.set()
            task.cancel()

    async def _generate(
        self,
        loaded: _Loaded,
        prompt: _Prompt,
        sampling: _Sampling,
        emit: Callable[[StreamDelta], None] | None,
        cancel: threading.Event,
    ) -> _Generation:
        executor = self._executor
        if executor is None:
            raise BackendUnavailable(f"embedded model from {self.model_dir} is not loaded")
        self._active.add(cancel)
        try:
            generation = await asyncio.get_running_loop().run_in_executor(
                executor, self._decode, loaded, prompt.ids, sampling, emit, cancel
            )
        finally:
            cancel.set()  # if this task was cancelled, the worker stops at its next token
            self._active.discard(cancel)
        if generation.cancelled:
            raise BackendUnavailable("the embedded backend closed during generation")
        return generation

    # the worker thread

    def _decode(
        self,
        loaded: _Loaded,
        prompt_ids: list[int],
        sampling: _Sampling,
        emit: Callable[[StreamDelta], None] | None,
        cancel: threading.Event,
    ) -> _Generation:
        if cancel.is_set():
            return _Generation([], [], 0, cancelled=True)
        with torch.inference_mode(), self._select_adapter(sampling.adapter):
            return self._decode_loop(loaded, prompt_ids, sampling, emit, cancel)

    def _decode_loop(
        self,
        loaded: _Loaded,
        prompt_ids: list[int],
        sampling: _Sampling,
        emit: Callable[[StreamDelta], None] | None,
        cancel: threading.Event,
    ) -> _Generation:
        greedy = sampling.temperature == 0
        rows = 1 if greedy else sampling.n
        # Each decoded row serves these choice indices (greedy: one row for all n copies).
        row_choices = [list(range(sampling.n))] if greedy else [[i] for i in range(rows)]
        model, device = loaded.model, loaded.device
        if not prompt_ids:
            start = loaded.tokenizer.bos_token_id
            if start is None:
                start = loaded.tokenizer.eos_token_id
            if start is None:
                raise Unprocessable("the prompt is empty and the tokenizer has no BOS/EOS token")
            prompt_ids = [start]
        generator = torch.Generator(device=device)
        if sampling.seed is None:
            generator.seed()
        else:
            generator.manual_seed(sampling.seed)

        out = model(input_ids=torch.tensor([prompt_ids], device=device), use_cache=True)
        cache = out.past_key_values
        logits = out.logits[:, -1, :].float()
        if rows > 1:
            # Prefill once, then let each sampled choice continue from its own copy.
            cache.batch_repeat_interleave(rows)
            logits = logits.expand(rows, -1).clone()
        seen = torch.zeros_like(logits, dtype=torch.bool)  # tokens each row produced
        texts = [_ChoiceText(loaded.tokenizer, sampling.stop) for _ in range(rows)]
        reasons: list[FinishReason | None] = [None] * rows
        produced = [0] * rows

        def publish(row: int, piece: str, reason: FinishReason | None) -> None:
            if emit is not None and (piece or reason):
                for index in row_choices[row]:
                    emit(StreamDelta(index=index, text=piece, finish_reason=reason))

        for step in range(sampling.max_tokens):
            if cancel.is_set():
                return _Generation([], [], 0, cancelled=True)
            next_ids = self._pick(logits, seen, sampling, generator)
            for row, token in enumerate(next_ids.tolist()):
                if reasons[row] is not None:
                    continue
                produced[row] += 1
                if token in loaded.stop_token_ids:
                    reasons[row] = "stop"
                    publish(row, texts[row].finish(), "stop")
                    continue
                seen[row, token] = True
                piece = texts[row].push(token)
                if texts[row].stopped:
                    reasons[row] = "stop"
                publish(row, piece, reasons[row])
            if all(r is not None for r in reasons) or step == sampling.max_tokens - 1:
                break
            out = model(input_ids=next_ids[:, None], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits = out.logits[:, -1, :].float()

        for row in range(rows):
            if reasons[row] is None:
                reasons[row] = "length"
                publish(row, texts[row].finish(), "length")
        texts_by_choice = [""] * sampling.n
        reasons_by_choice: list[FinishReason] = ["length"] * sampling.n
        for row, indices in enumerate(row_choices):
            for index in indices:
                texts_by_choice[index] = texts[row].text
                reasons_by_choice[index] = reasons[row] or "length"
        tokens = sum(produced[row] * len(row_choices[row]) for row in range(rows))
        return _Generation(texts_by_choice, reasons_by_choice, tokens)

    def _pick(
        self,
        logits: torch.Tensor,
        seen: torch.Tensor,
        sampling: _Sampling,
        generator: torch.Generator,
    ) -> torch.Tensor:
        if self.repetition_penalty != 1.0:
            penalized = torch.where(
                logits > 0, logits / self.repetition_penalty, logits * self.repetition_penalty
            )
            logits = torch.where(seen, penalized, logits)
        if sampling.temperature == 0:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits / sampling.temperature, dim=-1)
        if sampling.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            # Drop a token when the tokens ranked above it already reach top_p; the top one stays.
            outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= sampling.top_p
            sorted_probs = sorted_probs.masked_fill(outside, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)

    # facts

    def health(self) -> dict[str, Any]:
        loaded = self._loaded
        if loaded is not None:
            device = loaded.device.type
        else:
            device = (
                "cuda"
                if self.device.startswith("cuda")
                or (self.device == "auto" and torch.cuda.is_available())
                else "cpu"
            )
        return {
            "model": self.model_name,
            "loaded": loaded is not None,
            "model_version": loaded.version if loaded else None,
            "prompt_family": loaded.family if loaded else self.prompt_family,
            "template": templates.template_name(loaded.family) if loaded else None,
            "context_tokens": loaded.context_tokens if loaded else None,
            "device": device,
            "arch": platform.machine(),
            "cpu_info": self._cpu_info,
            "cpu_count": os.cpu_count(),
            "cuda_devices": list(self._cuda_devices),
            "parameters": loaded.parameters if loaded else 0,
            "adapters": self.adapters(),
        }
