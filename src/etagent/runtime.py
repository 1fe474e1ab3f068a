"""Facts about the process every layer may ask for: the CPU cores it may use, and etagent's cache
directory.

Data, tools, scoring, training and the backends all need one or the other, so they live here, below
all of them, rather than in a backend module (importing ``etagent.backends.hf`` for a core count
loads torch and transformers). Keep this module free of heavy imports: only the standard library.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def available_cores() -> int:
    """The number of CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def cache_dir() -> Path:
    """etagent's cache directory, created if missing: ``$ETAGENT_CACHE``, else ``etagent`` under
    ``$XDG_CACHE_HOME`` or ``~/.cache``. Converted models, search indexes and judge verdicts go
    there."""
    root = os.environ.get("ETAGENT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "etagent"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def process_rank() -> int:
    """This process's rank in a multi-process job (``torchrun`` / ``accelerate launch`` set
    ``RANK``); 0 when alone."""
    return int(os.environ.get("RANK", "0"))


def process_count() -> int:
    """How many processes the job has (``WORLD_SIZE``); 1 when alone."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at this moment (for a server or a rendezvous started next)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def launch_argv(processes: int) -> list[str]:
    """The Python arguments that run a module (``-m ...`` follows) on ``processes`` local
    processes: ``torch.distributed.run`` with a free rendezvous port; none for one process."""
    if processes <= 1:
        return []
    return [
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(processes),
        "--master_port",
        str(free_port()),
    ]
