"""Device choice, threads, seeding, logging and progress bars: the run-time plumbing.

Torch is imported inside the functions that need it, so importing this module stays cheap.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import numpy as np

from nanoseg.errors import NanosegError

T = TypeVar("T")
logger = logging.getLogger("nanoseg")


#: (logger, message) pairs :func:`log_once` has logged since the last :func:`setup_logging`.
_LOGGED_ONCE: set[tuple[str, str]] = set()


def log_once(logger: logging.Logger, level: int, msg: str, *args: Any) -> None:
    """Log a message at ``level`` the first time; the same text again only at DEBUG.

    For messages about the input that every stage would repeat. :func:`setup_logging` (each
    command) starts afresh.
    """
    key = (logger.name, msg % args if args else msg)
    if key in _LOGGED_ONCE:
        logger.debug(msg, *args)
        return
    _LOGGED_ONCE.add(key)
    logger.log(level, msg, *args)


def setup_logging(level: str | int = "INFO") -> None:
    """Log ``nanoseg`` messages to stderr with a time stamp, through rich when it is there.

    stdout stays free for what a command prints as its result.
    """
    _LOGGED_ONCE.clear()
    if isinstance(level, str):
        level = getattr(logging, level.upper())
    try:
        from rich.console import Console
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False,
                                               markup=False)
        fmt = "%(message)s"
    except ImportError:  # pragma: no cover - rich is a dependency
        handler = logging.StreamHandler()
        fmt = "%(asctime)s %(levelname)s %(message)s"
    handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    root = logging.getLogger("nanoseg")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (a running maximum, never lower later)."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def select_device(preference: str = "auto") -> Any:
    """Return a ``torch.device``: CUDA when available (``'auto'``), else the CPU.

    Raises
    ------
    NanosegError
        If ``'cuda'`` is asked for and no CUDA device is present.
    """
    import torch

    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise NanosegError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(preference)


def available_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup CPU quota (containers).

    ``os.cpu_count()`` counts the machine's cores, which overstates them under ``taskset``, a
    batch scheduler's affinity or a Docker ``--cpus`` limit; too many torch threads on too few
    cores made training steps up to 20x slower.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, int(quota + 0.5)))
    return max(1, cores)


def _cgroup_cpu_quota(path: str = "/sys/fs/cgroup/cpu.max") -> float | None:
    """CPUs granted by a cgroup v2 quota ("200000 100000" = 2), or None when unlimited or unknown."""
    try:
        with open(path) as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def configure_torch(num_threads: int | None = None) -> None:
    """Set torch's intra-op threads: ``num_threads``, else ``OMP_NUM_THREADS``, else the available cores.

    On a machine shared with other jobs one thread can be much faster than all of them;
    ``OMP_NUM_THREADS=1`` or ``num_threads: 1`` in the config says so.
    """
    import torch

    env_threads = os.environ.get("OMP_NUM_THREADS", "")
    threads = num_threads or (int(env_threads) if env_threads.isdigit() and int(env_threads) > 0 else None)
    threads = threads or available_cores()
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process
        pass


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, numpy and torch (if imported) and return a fresh numpy Generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return np.random.default_rng(seed)


def bf16_supported(device: Any) -> bool:
    """True when bfloat16 runs natively: any CUDA device with bf16, or a CPU with AVX512-BF16/AMX.

    On other CPUs (AVX2 laptops) torch emulates bfloat16, and a UNet training step takes several
    times longer than in float32.
    """
    import torch

    kind = torch.device(device).type
    if kind == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if kind == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def autocast(device: Any, enabled: bool) -> Any:
    """bfloat16 autocast on the given device when ``enabled`` and the hardware runs bf16 natively.

    A no-op context otherwise: emulated bf16 is slower than float32, not faster
    (:func:`bf16_supported`); the first call that falls back says so once in the log.
    """
    import contextlib

    import torch

    if not enabled:
        return contextlib.nullcontext()
    if not bf16_supported(device):
        if not _BF16_FALLBACK_LOGGED:
            _BF16_FALLBACK_LOGGED.append(True)
            logger.info("bf16 requested but %s has no native bfloat16; running in float32 (faster here)", device)
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


_BF16_FALLBACK_LOGGED: list[bool] = []


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "", **kwargs: Any) -> Iterator[T]:
    """Progress with ETA on stderr: a tqdm bar on a terminal (or in a notebook), else log lines.

    When stderr goes to a file or a pipe (a batch job, ``2> run.log``), a bar's redraws would
    fill the file, so one line is logged per tenth of the work instead. Silent when
    NANOSEG_NO_PROGRESS is set.
    """
    from tqdm.auto import tqdm

    disable = bool(os.environ.get("NANOSEG_NO_PROGRESS"))
    if not disable and not _interactive():
        return LoggedProgress(iterable, total=total, desc=desc, initial=kwargs.get("initial", 0))
    return tqdm(iterable, total=total, desc=desc, disable=disable, dynamic_ncols=True, leave=False, **kwargs)


def _interactive() -> bool:
    import sys

    return "ipykernel" in sys.modules or bool(getattr(sys.stderr, "isatty", lambda: False)())


class LoggedProgress:
    """Progress for log files: one INFO line per ``every`` (a fraction) of the work, with ETA.

    Iterate over it, or call :meth:`update` and :meth:`close`, like a tqdm bar. Without a
    total, a line per minute.
    """

    def __init__(self, iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
                 initial: int = 0, every: float = 0.1) -> None:
        import time

        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.n = iterable, total, desc or "progress", initial
        self._start_n, self._every, self._t0 = initial, every, time.monotonic()
        self._logged_at = self._bucket(initial)
        self._last_log = self._t0

    def _bucket(self, n: int) -> int:
        return int(n / self.total / self._every + 1e-9) if self.total else 0

    def __iter__(self) -> Iterator[T]:
        assert self.iterable is not None, "LoggedProgress without an iterable: call update()"
        for item in self.iterable:
            yield item
            self.update(1)

    def update(self, n: int = 1) -> None:
        import time

        self.n += n
        now = time.monotonic()
        if self.total:
            bucket = self._bucket(self.n)
            if bucket > self._logged_at:
                self._logged_at = bucket
                self._log(now)
        elif now - self._last_log >= 60:
            self._log(now)

    def close(self) -> None:
        """Nothing to flush (each line is logged when due); here so callers treat it like a tqdm bar."""

    def _log(self, now: float) -> None:
        from tqdm import tqdm

        self._last_log = now
        elapsed = now - self._t0
        done = self.n - self._start_n
        text = f"{self.desc}: {self.n}" + (f"/{self.total} ({100 * self.n / self.total:.0f} %)" if self.total else "")
        text += f", {tqdm.format_interval(elapsed)} elapsed"
        if self.total and done > 0 and self.n < self.total:
            text += f", ETA {tqdm.format_interval(elapsed / done * (self.total - self.n))}"
        logger.info(text)
