"""vLLM inside this process as a Generator: RL's ``vllm_colocate`` rollout engine.

TRL's GRPOTrainer, in its colocate mode, builds one ``vllm.LLM`` per training process (sharing the
process's GPU; ``distributed_executor_backend="external_launcher"``; log-probs after temperature,
``processed_logprobs``) and loads the trainer's weights into it before each rollout
(``vllm_generation.sync_weights()``). :class:`VLLMEngineGenerator` lets etagent's agent loop decode
with that engine: prompts go in as token ids, every completion comes back in the backend contract
of ``base.py`` (the stop string kept, cut with :func:`~etagent.backends.base.trim_at_stop` as the hf
backend cuts it; the sampled end-of-sequence token not returned; the sampled token's log-prob and
the top alternatives per token).

Sleep mode (GPU only; vLLM on CPU ignores it): TRL puts the engine to sleep after building it
(level 2: weights and KV cache released) so the optimizer step has the memory. A rollout is many
generate calls (one per turn), so the engine is woken once per rollout (:meth:`rollout_begin`: the
weights are pushed again, then the KV cache is allocated) and put back to sleep once at its end
(:meth:`rollout_end`), not around every call.
"""

from __future__ import annotations

from typing import Any

from etagent.backends.base import Completion, Generator, Prompt, SamplingParams, trim_at_stop


class VLLMEngineGenerator(Generator):
    """Decodes with TRL's colocated vLLM engine (``trainer.vllm_generation``)."""

    name = "vllm"

    def __init__(self, vllm_generation: Any, tokenizer: Any, *, model: str = "policy") -> None:
        self.engine = vllm_generation  # TRL's VLLMGeneration, mode "colocate"
        self.tokenizer = tokenizer
        self.model = model
        self.weights_version: str | None = None
        self.name = f"vllm:{model}"
        eos = tokenizer.eos_token_id
        self.eos_ids: set[int] = {eos} if isinstance(eos, int) else set(eos or [])
        self.max_model_len: int = self.engine.llm.llm_engine.model_config.max_model_len

    # ------------------------------------------------------------------------- rollout lifetime
    def rollout_begin(self, version: str) -> None:
        """Before a rollout: the engine awake with the current weights, named by ``version``."""
        if self.engine.enable_sleep_mode:
            if self.engine._llm_weights_sleeping:  # level-2 sleep dropped them: push them again
                self.engine.sync_weights()
            self.engine.llm.wake_up(tags=["kv_cache"])
        self.weights_version = version
        self.name = f"vllm:{self.model}#{version}"

    def rollout_end(self) -> None:
        """After a rollout: memory back to the optimizer step."""
        if self.engine.enable_sleep_mode:
            self.engine.llm.sleep(level=2)
            self.engine._llm_weights_sleeping = True

    # ------------------------------------------------------------------------------ decoding
    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        from vllm import SamplingParams as VLLMSamplingParams

        out: list[list[Completion] | None] = [None] * len(prompts)
        requests, slots = [], []
        for i, prompt in enumerate(prompts):
            ids = self.prompt_ids(prompt)
            room = self.max_model_len - len(ids)
            if not ids:
                raise ValueError(f"prompt {i} is empty: generation needs at least one prompt token")
            if room <= 0:  # the context window is full: this trajectory ends here
                out[i] = [Completion("", [], "context") for _ in range(params.n)]
                continue
            sampling = VLLMSamplingParams(
                n=params.n,
                max_tokens=min(params.max_new_tokens, room),
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k if params.top_k > 0 else -1,
                repetition_penalty=params.repetition_penalty,
                stop=list(params.stop) or None,
                include_stop_str_in_output=True,
                logprobs=max(params.logprobs, 0),
                seed=params.seed,
            )
            requests.append(({"prompt_token_ids": ids}, sampling))
            slots.append(i)
        if requests:
            results = self.engine.llm.generate(
                [r[0] for r in requests], sampling_params=[r[1] for r in requests], use_tqdm=False
            )
            for i, result in zip(slots, results, strict=True):
                out[i] = [self._completion(o, params) for o in result.outputs]
        return out  # type: ignore[return-value]

    def _completion(self, output: Any, params: SamplingParams) -> Completion:
        ids = list(output.token_ids)
        steps = list(output.logprobs or [])
        if ids and ids[-1] in self.eos_ids:  # the contract: the sampled EOS is not returned
            ids, steps = ids[:-1], steps[: len(ids) - 1]
        text, cut, stop, kept = trim_at_stop(self.tokenizer, ids, params.stop)
        if stop is not None:
            finish = "stop"
        elif output.finish_reason == "length":
            finish = "length"
        else:
            finish = "eos"
        retokenized = len(cut) - kept
        logprobs: list[float | None] | None = None
        top: list[dict[int, float]] | None = None
        if steps:
            logprobs = [steps[k][ids[k]].logprob for k in range(kept)] + [None] * retokenized
            if params.logprobs > 0:
                top = [{t: lp.logprob for t, lp in steps[k].items()} for k in range(kept)]
                top += [{}] * retokenized
        return Completion(text, cut, finish, stop=stop, logprobs=logprobs, top_logprobs=top)  # type: ignore[arg-type]
