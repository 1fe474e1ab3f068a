"""The ``vllm_server`` rollout engine: vLLM servers sample RL's trajectories and get the policy's new
weights after every update.

TRL's GRPOTrainer already knows when weights must move: before a rollout whose optimizer step
differs from the last synced one it calls ``trainer.vllm_generation.sync_weights()`` (also on the
first step and after a resume, so the servers always sample from the weights being trained). Its
own implementation is an NCCL broadcast to one server (GPU only). :class:`ServerWeightSync` takes
that place with either

- ``disk``: every process takes part in gathering the full weights (``accelerator.get_state_dict``:
  a collective under ZeRO-3 and FSDP), the main process writes them to a directory the servers
  can read, and each server reloads them in place (vLLM dev mode: ``POST /collective_rpc``
  ``reload_weights``) and drops its prefix cache (cached prompt blocks were computed with the old
  weights). Works with vLLM on CPU and GPU and with any number of servers; or
- ``nccl``: TRL's own broadcast, wrapped,

and then a barrier, so no process starts rolling out before every server has the new weights. The
agent's generator is told the weight version, which each trajectory records in its ``model``.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from etagent.config import ConfigError

log = logging.getLogger("etagent.rl")


def server_root(base_url: str) -> str:
    """``http://host:port`` of an OpenAI base URL (``.../v1``): vLLM's admin routes live there."""
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


class DiskWeightPush:
    """Writes the policy's weights under ``sync_dir`` and has every server reload them."""

    def __init__(
        self,
        trainer: Any,
        base_urls: list[str],
        sync_dir: Path,
        dtype: str = "bfloat16",
        timeout_s: float = 600.0,
    ):
        self.trainer = trainer
        self.roots = [server_root(u) for u in base_urls]
        self.sync_dir = Path(sync_dir).absolute()
        self.dtype = dtype
        self.timeout_s = timeout_s

    def __call__(self) -> None:
        import torch

        accelerator = self.trainer.accelerator
        model = self.trainer.model_wrapped  # what accelerate prepared (DDP, DeepSpeed engine, FSDP)
        # a collective under ZeRO-3 / FSDP: every process must call it, only the main one gets it all
        state = accelerator.get_state_dict(model)
        if not accelerator.is_main_process:
            return
        dtype = getattr(torch, self.dtype)
        state = {name: tensor.detach().to("cpu", dtype) for name, tensor in state.items()}
        staging = self.sync_dir.with_name(self.sync_dir.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        # save_pretrained drops tied copies (lm_head = embeddings) and writes safetensors shards
        accelerator.unwrap_model(model).save_pretrained(staging, state_dict=state, safe_serialization=True)
        old = self.sync_dir.with_name(self.sync_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if self.sync_dir.exists():
            self.sync_dir.rename(old)
        staging.rename(self.sync_dir)
        shutil.rmtree(old, ignore_errors=True)
        with httpx.Client(timeout=self.timeout_s) as client:
            for root in self.roots:
                self._post(
                    client,
                    f"{root}/collective_rpc",
                    {"method": "reload_weights", "kwargs": {"weights_path": str(self.sync_dir)}},
                )
                self._post(client, f"{root}/reset_prefix_cache", None)

    @staticmethod
    def _post(client: httpx.Client, url: str, body: dict[str, Any] | None) -> None:
        try:
            response = client.post(url, json=body)
        except httpx.HTTPError as exc:
            raise ConfigError(f"rl: could not reach the rollout server at {url}: {exc}") from exc
        if response.status_code == 404:
            raise ConfigError(
                f"rl: {url} answered 404: start the vLLM server with VLLM_SERVER_DEV_MODE=1 (its weight "
                "reloading and cache routes exist only in dev mode; scripts/vllm_cpu.sh serve does this)"
            )
        if response.status_code >= 400:
            raise ConfigError(f"rl: {url} answered {response.status_code}: {response.text[:500]}")


class ServerWeightSync:
    """Stands in for TRL's ``trainer.vllm_generation``: ``sync_weights()`` pushes the weights, waits
    for every process, and tells the generator the new weight version."""

    def __init__(self, push: Callable[[], None], trainer: Any, generator: Any | None = None):
        self.push = push
        self.trainer = trainer
        self.generator = generator  # set once the rollout's generator exists
        self.syncs = 0
        self.seconds = 0.0

    def sync_weights(self) -> None:
        t0 = time.perf_counter()
        self.push()
        self.trainer.accelerator.wait_for_everyone()  # no process rolls out with stale server weights
        self.syncs += 1
        self.seconds += time.perf_counter() - t0
        step = self.trainer.state.global_step
        if self.generator is not None:
            self.generator.set_weights_version(f"step{step}")
        log.info(
            "rl: rollout servers have the weights of optimizer step %d (%.1f s)",
            step,
            time.perf_counter() - t0,
        )


def install_server_engine(trainer: Any, cfg: Any, run_dir: Path) -> ServerWeightSync:
    """Make ``trainer`` (built with ``use_vllm`` unset for ``disk``, set for ``nccl``) push weights to
    the rollout servers before each rollout and apply TRL's importance-sampling correction.

    TRL reads ``use_vllm`` at those two places only once the trainer exists; setting it here for the
    disk path reuses them without TRL's NCCL client, which cannot run on CPU.
    """
    engine = cfg.rollout
    if engine.weight_sync == "nccl":
        push: Callable[[], None] = trainer.vllm_generation.sync_weights
    else:
        urls = cfg.agent.backend.section().base_url
        push = DiskWeightPush(
            trainer,
            [urls] if isinstance(urls, str) else list(urls),
            Path(engine.sync_dir) if engine.sync_dir else Path(run_dir) / "rollout_weights",
            dtype=engine.sync_dtype,
        )
        trainer.use_vllm = True
        trainer.vllm_mode = "server"
    sync = ServerWeightSync(push, trainer)
    trainer.vllm_generation = sync
    trainer._last_loaded_step = -1  # sync before the first rollout too (a resumed run's weights)
    return sync
