"""Fine-tuning: the SFT data format and masks (:mod:`.sft_data`) and the SFT stage (:mod:`.sft`)."""

from etagent.train.sft import LoraSettings, SFTConfig, build_trainer, run_sft
from etagent.train.sft_data import (
    SFTExample,
    TokenizedExample,
    load_sft_examples,
    split_trajectory,
    tokenize_example,
    tool_result_spans,
    trajectories_to_sft_examples,
)

__all__ = [
    "LoraSettings",
    "SFTConfig",
    "SFTExample",
    "TokenizedExample",
    "build_trainer",
    "load_sft_examples",
    "run_sft",
    "split_trajectory",
    "tokenize_example",
    "tool_result_spans",
    "trajectories_to_sft_examples",
]
