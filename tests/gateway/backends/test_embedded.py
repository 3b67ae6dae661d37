"""The embedded backend on a real tiny transformers model, generating on this CPU.

``tiny_model_dir`` is the session's bootstrap model (tests/fixtures_model.py): a 2-layer Llama
with a byte-level BPE and Qwen FIM tokens, pretrained for a few steps, 128-token context.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gateway.backends import templates
from gateway.backends.base import (
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    CompletionResult,
    StreamDelta,
)
from gateway.backends.embedded import EmbeddedBackend
from gateway.errors import BackendUnavailable, Unprocessable

T = TypeVar("T")

PREFIX = "def mean(values):\n    total = 0\n    for value in values:\n"
SUFFIX = "\n    return total / len(values)\n"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _started(model_dir: Path, **options: Any) -> EmbeddedBackend:
    backend = EmbeddedBackend(model_dir, model_name="tiny", **options)
    run(backend.start())
    return backend


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path) -> Iterator[EmbeddedBackend]:
    started = _started(tiny_model_dir)
    yield started
    run(started.close())


@pytest.fixture(scope="module")
def plain_backend(tiny_model_dir: Path) -> Iterator[EmbeddedBackend]:
    """The same model continuing the bare prefix (no FIM), where it writes on to max_tokens."""
    started = _started(tiny_model_dir, prompt_family="plain")
    yield started
    run(started.close())


def _derive(
    source: Path,
    target: Path,
    *,
    chat_template: str | None = None,
    edit: Callable[[Any, Any], None] | None = None,
) -> Path:
    """A copy of a model directory with a chat template set (or removed) and weights edited."""
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(source, local_files_only=True)
    tokenizer.chat_template = chat_template
    if edit is not None:
        with torch.no_grad():
            edit(model, tokenizer)
    tokenizer.save_pretrained(target)
    model.save_pretrained(target)
    return target


@contextmanager
def _on_model_forward(hook: Callable[[], None]) -> Iterator[None]:
    """Call hook at every forward pass of a whole causal LM (public torch hook, any model)."""

    def forward_hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        if type(module).__name__.endswith("ForCausalLM"):
            hook()

    handle = torch.nn.modules.module.register_module_forward_hook(forward_hook)
    try:
        yield
    finally:
        handle.remove()


async def _collect(stream: Any) -> list[StreamDelta]:
    return [delta async for delta in stream]


def _joined(deltas: list[StreamDelta]) -> dict[int, str]:
    texts: dict[int, str] = {}
    for delta in deltas:
        texts[delta.index] = texts.get(delta.index, "") + delta.text
    return texts


def _finishes(deltas: list[StreamDelta]) -> dict[int, str]:
    return {d.index: d.finish_reason for d in deltas if d.finish_reason is not None}


def _texts(result: CompletionResult) -> list[str]:
    return [choice.text for choice in result.choices]


# loading and facts


def test_when_started_then_version_is_model_name_and_weights_hash(
    backend: EmbeddedBackend, tiny_model_dir: Path
) -> None:
    weights = (tiny_model_dir / "model.safetensors").read_bytes()
    assert backend.model_version == f"tiny@{hashlib.sha256(weights).hexdigest()[:12]}"


def test_when_started_then_health_reports_device_cpu_and_model_facts(
    backend: EmbeddedBackend,
) -> None:
    facts = backend.health()
    assert facts["model"] == "tiny"
    assert facts["device"] == "cpu"  # no CUDA on this machine, device="auto"
    assert facts["cuda_devices"] == []
    assert facts["arch"] and facts["cpu_info"]
    assert facts["cpu_count"] >= 1
    assert facts["parameters"] > 100_000
    assert facts["model_version"] == backend.model_version


def test_when_tokenizer_has_qwen_fim_tokens_then_auto_family_is_qwen(
    backend: EmbeddedBackend,
) -> None:
    assert backend.health()["prompt_family"] == "qwen"
    assert backend.template_name == "qwen-fim-v1"


def test_when_model_dir_is_missing_then_backend_unavailable_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(BackendUnavailable, match=str(missing)):
        run(EmbeddedBackend(missing, model_name="m").start())


def test_when_model_dir_has_no_weights_then_backend_unavailable(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    (tmp_path / "config.json").write_bytes((tiny_model_dir / "config.json").read_bytes())
    with pytest.raises(BackendUnavailable, match="no model weights"):
        run(EmbeddedBackend(tmp_path, model_name="m").start())


def test_when_weights_are_corrupt_then_backend_unavailable_from_the_loader_error(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((tiny_model_dir / name).read_bytes())
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(BackendUnavailable, match="cannot load the model") as caught:
        run(EmbeddedBackend(tmp_path, model_name="m").start())
    assert caught.value.__cause__ is not None


def test_when_not_started_then_requests_are_backend_unavailable(tiny_model_dir: Path) -> None:
    idle = EmbeddedBackend(tiny_model_dir, model_name="tiny")
    with pytest.raises(BackendUnavailable):
        run(idle.complete(CompletionRequest(prefix="x")))
    with pytest.raises(BackendUnavailable):
        idle.render_completion_prompt(CompletionRequest(prefix="x"))
    assert idle.health()["loaded"] is False


def test_when_device_is_malformed_then_value_error_at_construction(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="gpu-please"):
        EmbeddedBackend(tiny_model_dir, model_name="tiny", device="gpu-please")


# prompts


@pytest.mark.parametrize("family", templates.FAMILIES)
def test_when_family_is_forced_then_prompt_is_that_familys_template(
    tiny_model_dir: Path, family: str
) -> None:
    forced = _started(tiny_model_dir, prompt_family=family)
    try:
        request = CompletionRequest(prefix=PREFIX, suffix=SUFFIX, max_tokens=4)
        rendered = forced.render_completion_prompt(request)
        assert rendered == templates.render_completion(family, PREFIX, SUFFIX)
        assert run(forced.complete(request)).rendered_prompt == rendered
    finally:
        run(forced.close())


def test_when_prompt_exceeds_context_then_prefix_end_and_suffix_start_are_kept(
    tiny_model_dir: Path,
) -> None:
    narrow = _started(tiny_model_dir, max_context_tokens=96)
    try:
        prefix = "".join(f"alpha_{i} = {i}\n" for i in range(200))
        suffix = "".join(f"omega_{i} = {i}\n" for i in range(200))
        result = run(
            narrow.complete(CompletionRequest(prefix=prefix, suffix=suffix, max_tokens=16))
        )
    finally:
        run(narrow.close())
    assert result.prompt_tokens + 16 <= 96
    assert result.prompt_tokens >= 96 - 16 - 4  # the window is used, not left mostly empty
    body = result.rendered_prompt.removeprefix("<|fim_prefix|>").removesuffix("<|fim_middle|>")
    kept_prefix, kept_suffix = body.split("<|fim_suffix|>")
    assert kept_prefix and prefix.endswith(kept_prefix) and len(kept_prefix) < len(prefix)
    assert kept_suffix and suffix.startswith(kept_suffix) and len(kept_suffix) < len(suffix)
    assert len(kept_prefix) > len(kept_suffix)  # the cursor's left side gets most of the room


def test_when_max_tokens_leaves_no_room_for_the_prompt_then_unprocessable(
    tiny_model_dir: Path,
) -> None:
    narrow = _started(tiny_model_dir, max_context_tokens=32)
    try:
        with pytest.raises(Unprocessable, match="context window"):
            run(narrow.complete(CompletionRequest(prefix="x = 1", max_tokens=32)))
    finally:
        run(narrow.close())


@pytest.mark.parametrize(
    "overrides",
    [
        {"n": 0},  # no choices
        {"top_p": 0.0},  # nothing to sample from
        {"temperature": -1.0},  # not a temperature
        {"max_tokens": 0},  # nothing to generate
    ],
)
def test_when_sampling_parameters_are_invalid_then_unprocessable(
    backend: EmbeddedBackend, overrides: dict[str, Any]
) -> None:
    request = CompletionRequest(prefix=PREFIX, **overrides)
    with pytest.raises(Unprocessable):
        run(backend.complete(request))


# generation


@pytest.mark.parametrize("fim", [True, False])  # through the FIM template / bare prefix
def test_when_temperature_is_zero_then_same_request_gives_same_text(
    backend: EmbeddedBackend, plain_backend: EmbeddedBackend, fim: bool
) -> None:
    serving = backend if fim else plain_backend
    request = CompletionRequest(prefix=PREFIX, suffix=SUFFIX, max_tokens=24)
    first, second = run(serving.complete(request)), run(serving.complete(request))
    assert first == second


def test_when_greedy_with_n_choices_then_n_identical_copies(backend: EmbeddedBackend) -> None:
    single = run(backend.complete(CompletionRequest(prefix=PREFIX, max_tokens=12)))
    triple = run(backend.complete(CompletionRequest(prefix=PREFIX, max_tokens=12, n=3)))
    assert [c.index for c in triple.choices] == [0, 1, 2]
    assert _texts(triple) == _texts(single) * 3
    assert triple.completion_tokens == 3 * single.completion_tokens


def test_when_sampling_with_a_seed_then_the_text_is_reproducible(
    backend: EmbeddedBackend,
) -> None:
    def sample(seed: int) -> str:
        request = CompletionRequest(prefix=PREFIX, max_tokens=16, temperature=1.5, seed=seed)
        return run(backend.complete(request)).choices[0].text

    assert sample(7) == sample(7)
    # the seed is what varies the text: other seeds give other samples
    assert len({sample(seed) for seed in (1, 2, 3, 4)}) > 1


def test_when_sampling_n_choices_then_each_is_its_own_sample(backend: EmbeddedBackend) -> None:
    request = CompletionRequest(prefix=PREFIX, max_tokens=10, temperature=1.5, n=3, seed=11)
    result = run(backend.complete(request))
    assert [c.index for c in result.choices] == [0, 1, 2]
    assert len(set(_texts(result))) > 1
    assert result.completion_tokens <= 30


def test_when_max_tokens_is_reached_then_finish_reason_is_length(
    plain_backend: EmbeddedBackend,
) -> None:
    request = CompletionRequest(prefix=PREFIX, max_tokens=7)
    result = run(plain_backend.complete(request))
    assert result.choices[0].finish_reason == "length"
    assert result.completion_tokens == 7
    deltas = run(_collect(plain_backend.stream(request)))
    assert len([d for d in deltas if d.text]) <= 7  # at most one piece per token
    assert _joined(deltas) == {0: result.choices[0].text}


def _fresh_window(text: str, size: int = 6) -> str:
    """Printable text, likely several tokens long, that first occurs a few characters in."""
    for start in range(4, len(text) - size):
        window = text[start : start + size]
        if window.isprintable() and window.isascii() and text.find(window) == start:
            return window
    raise AssertionError(f"no stop string candidate in {text!r}")


def test_when_a_stop_string_appears_then_text_ends_before_it(
    plain_backend: EmbeddedBackend,
) -> None:
    # seeded sampling writes varied text, and the same seed replays it up to the stop
    free_request = CompletionRequest(prefix=PREFIX, max_tokens=24, temperature=1.0, seed=3)
    free = run(plain_backend.complete(free_request))
    text = free.choices[0].text
    stop = _fresh_window(text)
    request = CompletionRequest(
        prefix=PREFIX, max_tokens=24, temperature=1.0, seed=3, stop=["never-there", stop]
    )
    stopped = run(plain_backend.complete(request))
    assert stopped.choices[0].text == text[: text.find(stop)]
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.completion_tokens < free.completion_tokens
    # streamed: the held-back start of the stop string is never sent
    deltas = run(_collect(plain_backend.stream(request)))
    assert _joined(deltas) == {0: text[: text.find(stop)]}
    assert _finishes(deltas) == {0: "stop"}


def test_when_streaming_greedy_then_pieces_concatenate_to_the_complete_text(
    plain_backend: EmbeddedBackend,
) -> None:
    request = CompletionRequest(prefix=PREFIX, max_tokens=24)
    whole = run(plain_backend.complete(request))
    deltas = run(_collect(plain_backend.stream(request)))
    assert len(deltas) > 3  # token by token, not one piece at the end
    assert _joined(deltas) == {0: whole.choices[0].text}
    assert _finishes(deltas) == {0: whole.choices[0].finish_reason}
    assert deltas[-1].finish_reason is not None


def test_when_streaming_sampled_choices_then_each_index_matches_the_seeded_result(
    backend: EmbeddedBackend,
) -> None:
    request = CompletionRequest(prefix=PREFIX, max_tokens=12, temperature=1.0, n=2, seed=5)
    whole = run(backend.complete(request))
    deltas = run(_collect(backend.stream(request)))
    assert _joined(deltas) == dict(enumerate(_texts(whole)))
    assert set(_finishes(deltas)) == {0, 1}


def _force_fim_stop_tokens(model: Any, tokenizer: Any) -> None:
    """Only <|fim_pad|> or <|fim_prefix|> can win: one of them is the first token, whatever x is.

    The final norm keeps one hidden dimension; the two rows read it with opposite signs.
    The output layer is untied from the input embeddings first, which must stay intact.
    """
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    model.model.norm.weight.zero_()
    model.model.norm.weight[0] = 1.0
    model.lm_head.weight.zero_()
    model.lm_head.weight[tokenizer.convert_tokens_to_ids("<|fim_pad|>"), 0] = 10.0
    model.lm_head.weight[tokenizer.convert_tokens_to_ids("<|fim_prefix|>"), 0] = -10.0


def test_when_model_emits_a_family_stop_token_then_choice_stops_there(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    stopper = _derive(tiny_model_dir, tmp_path / "stopper", edit=_force_fim_stop_tokens)
    qwen = _started(stopper)
    plain = _started(stopper, prompt_family="plain")
    try:
        request = CompletionRequest(prefix=PREFIX, max_tokens=8)
        stopped = run(qwen.complete(request))
        # the plain family has no FIM stop tokens: the same tokens run on to max_tokens
        unstopped = run(plain.complete(request))
        streamed = run(_collect(qwen.stream(request)))
    finally:
        run(qwen.close())
        run(plain.close())
    assert (stopped.choices[0].text, stopped.choices[0].finish_reason) == ("", "stop")
    assert stopped.completion_tokens == 1
    assert (unstopped.choices[0].text, unstopped.choices[0].finish_reason) == ("", "length")
    assert streamed == [StreamDelta(index=0, text="", finish_reason="stop")]


def _most_repeated(text: str, size: int = 6) -> str:
    pieces = [text[i : i + size] for i in range(len(text) - size + 1)]
    return max(pieces, key=text.count)


def test_when_repetition_penalty_is_set_then_greedy_loops_are_broken(
    tiny_model_dir: Path, plain_backend: EmbeddedBackend
) -> None:
    request = CompletionRequest(prefix=PREFIX, max_tokens=32)
    looping = run(plain_backend.complete(request)).choices[0].text
    loop = _most_repeated(looping)
    assert looping.count(loop) >= 3, "greedy decoding of the tiny model loops"
    # firm enough to break the loop of any tiny model; deployments use milder values
    penalized = _started(tiny_model_dir, prompt_family="plain", repetition_penalty=3.0)
    try:
        varied = run(penalized.complete(request)).choices[0].text
    finally:
        run(penalized.close())
    assert varied.count(loop) < looping.count(loop)


# chat

CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'assistant' %}"
    "{{ raise_exception('the conversation must not start with the assistant') }}{% endif %}"
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)
MESSAGES = [ChatMessage("system", "Be brief."), ChatMessage("user", "Sum a list?")]


def test_when_tokenizer_has_a_chat_template_then_chat_uses_it_with_generation_prompt(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    chatty = _started(_derive(tiny_model_dir, tmp_path / "chat", chat_template=CHAT_TEMPLATE))
    try:
        request = ChatRequest(messages=MESSAGES, max_tokens=8)
        result = run(chatty.chat(request))
        deltas = run(_collect(chatty.stream_chat(request)))
        with pytest.raises(Unprocessable, match="must not start with the assistant"):
            run(chatty.chat(ChatRequest(messages=[ChatMessage("assistant", "Hi")])))
    finally:
        run(chatty.close())
    assert result.rendered_prompt == "[system] Be brief.\n[user] Sum a list?\n[assistant] "
    assert result.prompt_tokens > 0 and result.choices[0].finish_reason in ("stop", "length")
    assert _joined(deltas) == {0: result.choices[0].text}


def test_when_tokenizer_has_no_chat_template_then_chat_uses_the_fallback_transcript(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    bare = _started(_derive(tiny_model_dir, tmp_path / "bare", chat_template=None))
    try:
        result = run(bare.chat(ChatRequest(messages=MESSAGES, max_tokens=8)))
    finally:
        run(bare.close())
    assert result.rendered_prompt == templates.render_chat_fallback(MESSAGES)
    assert "\nUser:" not in result.choices[0].text


def test_when_conversation_exceeds_context_then_unprocessable(tiny_model_dir: Path) -> None:
    narrow = _started(tiny_model_dir, max_context_tokens=64)
    try:
        long = [ChatMessage("user", "word " * 200)]
        with pytest.raises(Unprocessable, match="context window"):
            run(narrow.chat(ChatRequest(messages=long, max_tokens=8)))
    finally:
        run(narrow.close())


# concurrency


def test_when_requests_are_gathered_then_all_complete_with_their_solo_results(
    backend: EmbeddedBackend,
) -> None:
    requests = [
        CompletionRequest(prefix=PREFIX + f"        # step {i}\n", max_tokens=10) for i in range(4)
    ]
    solo = [run(backend.complete(r)).choices[0].text for r in requests]

    async def together() -> tuple[list[CompletionResult], list[StreamDelta]]:
        streamed = asyncio.ensure_future(_collect(backend.stream(requests[0])))
        results = await asyncio.gather(*(backend.complete(r) for r in requests))
        return list(results), await streamed

    results, deltas = run(together())
    assert [r.choices[0].text for r in results] == solo
    assert _joined(deltas) == {0: solo[0]}


def test_when_generating_then_the_event_loop_keeps_running_other_coroutines(
    backend: EmbeddedBackend,
) -> None:
    reached_model = threading.Event()
    loop_ran = threading.Event()
    seen: list[tuple[str, bool]] = []

    def hold_first_forward() -> None:
        if not seen:
            reached_model.set()
            # A generation on the event loop thread would wait here in vain: the loop is stuck.
            seen.append((threading.current_thread().name, loop_ran.wait(timeout=30)))

    async def ticker() -> None:
        assert await asyncio.to_thread(reached_model.wait, 30)
        loop_ran.set()

    async def scenario() -> CompletionResult:
        result, _ = await asyncio.gather(
            backend.complete(CompletionRequest(prefix=PREFIX, max_tokens=4)), ticker()
        )
        return result

    with _on_model_forward(hold_first_forward):
        result = run(scenario())
    assert seen == [(seen[0][0], True)]
    assert seen[0][0].startswith("gristmill-embedded")
    assert result.choices[0].finish_reason in ("stop", "length")


def test_when_stream_consumer_leaves_then_decoding_stops_at_the_next_token(
    plain_backend: EmbeddedBackend,
) -> None:
    first_received = threading.Event()
    release = threading.Event()
    forwards_after_leaving = 0

    def count_and_hold() -> None:
        nonlocal forwards_after_leaving
        if first_received.is_set():
            forwards_after_leaving += 1
            release.wait(timeout=30)

    async def scenario() -> None:
        stream = plain_backend.stream(CompletionRequest(prefix=PREFIX, max_tokens=80))
        await anext(stream)
        first_received.set()
        await stream.aclose()
        release.set()

    with _on_model_forward(count_and_hold):
        run(scenario())
        # queued behind the abandoned stream in the single worker: runs once that one returned
        after = run(plain_backend.complete(CompletionRequest(prefix=PREFIX, max_tokens=1)))
    assert after.choices[0].finish_reason in ("stop", "length")
    # at most the forward in flight when the client left, plus the follow-up's prefill
    assert forwards_after_leaving <= 2


def test_when_closed_during_generation_then_request_fails_unavailable(
    tiny_model_dir: Path,
) -> None:
    closing_backend = _started(tiny_model_dir)
    entered = threading.Event()
    release = threading.Event()

    def hold() -> None:
        entered.set()
        release.wait(timeout=30)

    async def scenario() -> None:
        pending = asyncio.ensure_future(
            closing_backend.complete(CompletionRequest(prefix=PREFIX, max_tokens=50))
        )
        assert await asyncio.to_thread(entered.wait, 30)
        closing = asyncio.ensure_future(closing_backend.close())
        await asyncio.sleep(0)  # close() flags every submitted generation before it waits
        release.set()
        with pytest.raises(BackendUnavailable, match="closed during generation"):
            await pending
        await closing
        with pytest.raises(BackendUnavailable, match="not loaded"):
            await closing_backend.complete(CompletionRequest(prefix=PREFIX))

    with _on_model_forward(hold):
        run(scenario())
    assert closing_backend.health()["loaded"] is False
