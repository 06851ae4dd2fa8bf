"""The training loop shared by supervised training and pretraining.

* **CPU first**: threads set from the cores this process may use; 3D convolutions in channels-last
  memory format; bf16 autocast only where the CPU computes bf16 natively (AMX or AVX-512 BF16 —
  elsewhere it is emulated and several times *slower*, so ``precision = "auto"`` keeps fp32).
* **Deterministic**: seeds for Python, NumPy and torch; batch order and augmentations are drawn
  from ``(seed, epoch)``, so an interrupted run resumed from its last checkpoint reproduces the
  uninterrupted one exactly.
* **Checkpoints**: ``last.pt`` after every epoch (model, optimiser, scheduler, history, early
  stopping state), ``best.pt`` when the monitored metric improves; both written atomically.
* **Progress**: reported through callbacks, never printed: ``progress(stage, done, total)``
  (:mod:`sobre.base`) counts samples within an epoch, ``on_epoch(row)`` receives each epoch's
  record; throughput for training and inference is recorded per epoch.
* **Data parallel** (PyTorch DistributedDataParallel, gloo on CPU): when a process group is up
  (``sobre train|pretrain --nproc N``, or ``torchrun`` on a cluster: :func:`init_parallel`), every
  process draws the same global batch and the same augmentations, keeps its block of rows
  (:func:`shard`), and gradients are averaged so that one optimiser step equals the single-process
  step on the global batch. Batch norm uses the statistics of the global batch
  (:func:`global_batchnorm`); contrastive losses see the negatives of every process
  (:func:`sobre.learn._losses.gather_rows`). Process 0 alone validates, checkpoints and records.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sobre.base import Progress, no_progress
from sobre.learn._config import OptimConfig, RuntimeConfig

__all__ = ["cpu_bf16_support", "resolve_precision", "setup_runtime", "batches", "run_epochs", "LoopResult",
           "autocast", "to_device_batch", "make_optimizer", "save_checkpoint", "load_checkpoint", "reporters",
           "epoch_line", "Parallel", "parallel", "init_parallel", "shard", "block_sizes", "global_batchnorm", "data_parallel",
           "broadcast", "all_sum", "barrier", "one_writer"]


# ------------------------------------------------------------------------------------------ runtime
def cpu_bf16_support() -> bool:
    """True when the CPU has native bf16 arithmetic (AMX-BF16 or AVX-512 BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # pragma: no cover - non-Linux
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(runtime: RuntimeConfig) -> tuple[bool, str]:
    """(use bf16 autocast, why)."""
    native = cpu_bf16_support()
    if runtime.precision == "fp32":
        return False, "fp32 requested"
    if runtime.precision == "bf16":
        return True, "bf16 requested" + ("" if native else " (no native bf16 on this CPU: emulated, slower)")
    # auto is fp32 on every CPU: bf16 autocast changed results where it was measured (the label-efficiency
    # benchmark: y-aware + probe AUC 0.672 in fp32, 0.626 in bf16), so it is used only when asked for
    if native:
        return False, ("auto: fp32 (this CPU has native bf16, but bf16 changed the AUC on the label-efficiency "
                       "benchmark; set precision = \"bf16\" to use it)")
    return False, "auto: fp32 (CPU has no native bf16 (AMX/AVX-512 BF16))"


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def setup_runtime(runtime: RuntimeConfig, seed: int) -> dict:
    """Threads, seeds, determinism; returns what was set (recorded in the run).

    Data-parallel processes on one machine share its cores: each takes its part of them.
    """
    par = parallel()
    threads = runtime.threads or max(1, available_cores() // (par.local_world if par.active else 1))
    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    use_bf16, why = resolve_precision(runtime)
    out = {"threads": threads, "bf16": use_bf16, "precision": "bf16" if use_bf16 else "fp32",
           "precision_reason": why, "prefetch": runtime.prefetch}
    if par.active:
        out["data_parallel"] = {"processes": par.world, "backend": "gloo"}
    return out


# ------------------------------------------------------------------------------------ data parallel
@dataclass(frozen=True)
class Parallel:
    """This process's place in a data-parallel run: ``rank`` of ``world`` (``local_world`` on this machine)."""

    rank: int = 0
    world: int = 1
    local_world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def writer(self) -> bool:
        """Process 0: the one that validates, checkpoints and writes the run record."""
        return self.rank == 0


def parallel() -> Parallel:
    """The data-parallel group this process belongs to (a single process when none is initialised)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return Parallel()
    world = dist.get_world_size()
    return Parallel(dist.get_rank(), world, int(os.environ.get("LOCAL_WORLD_SIZE", world)))


def init_parallel(timeout_hours: float = 6.0) -> Parallel:
    """Join the process group the launcher describes (``torchrun``'s variables: ``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``, ``LOCAL_WORLD_SIZE``), with the gloo backend (CPU).

    Nothing happens for a single process (no ``WORLD_SIZE``, or 1). ``timeout_hours`` bounds how long a
    process waits for the others (process 0 builds a missing preprocessing cache while they wait).
    """
    import datetime

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return parallel()
    dist.init_process_group("gloo", timeout=datetime.timedelta(hours=timeout_hours))
    return parallel()


def shard(n: int, par: Parallel) -> slice:
    """This process's block of a global batch of ``n`` rows (contiguous blocks in rank order, sizes differ by ≤ 1)."""
    base, extra = divmod(n, par.world)
    lo = par.rank * base + min(par.rank, extra)
    return slice(lo, lo + base + (1 if par.rank < extra else 0))


def block_sizes(n: int, par: Parallel) -> list[int]:
    """The length of every process's block of a global batch of ``n`` rows (see :func:`shard`)."""
    return [len(range(n)[shard(n, Parallel(r, par.world))]) for r in range(par.world)]


class _GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm over the global batch of a data-parallel run, on CPU (``torch.nn.SyncBatchNorm`` needs a GPU).

    Sums and sums of squares of every process are added with a differentiable all-reduce, so that
    outputs, gradients and running statistics are those of one process seeing the whole batch.
    """

    def _check_input_dim(self, x) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        import warnings

        from torch.distributed.nn.functional import all_reduce  # differentiable, gloo included

        dims = [0] + list(range(2, x.dim()))
        xf = x.float()
        c = x.shape[1]
        shape = [1, c] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() / c], dtype=torch.float32, device=x.device)
        # two passes (the global mean, then the squares about it), as batch norm itself computes them:
        # E[x^2] - E[x]^2 in float32 loses digits when the mean is large against the spread
        with warnings.catch_warnings():  # torch 2.13 suggests its private _functional_collectives instead
            warnings.simplefilter("ignore", FutureWarning)
            first = all_reduce(torch.cat([xf.sum(dims), count]))
            n = first[-1]
            mean = first[:c] / n
            var = all_reduce(((xf - mean.view(shape)) ** 2).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1).clamp_min(1))
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def global_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` with every batch-norm layer computing global-batch statistics (same parameters and buffers)."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, _GlobalBatchNorm):
            new = _GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            setattr(model, name, new)
        else:
            global_batchnorm(child)
    return model


def data_parallel(model: nn.Module, par: Parallel, *, find_unused: bool = False) -> nn.Module:
    """The module to call in a training step: ``model`` itself, or its DistributedDataParallel wrapper.

    Convert batch norm first (:func:`global_batchnorm`). Parameters are broadcast from process 0.
    ``find_unused``: some parameters get no gradient in some steps (a frozen encoder during head warm-up).
    """
    if not par.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, find_unused_parameters=find_unused)


def one_writer(par: Parallel, run, begin: Callable[[], object]) -> tuple[object, Path | None]:
    """``(run, checkpoints to resume from)``: process 0 records its run (``begin()``), the others none.

    ``run`` is the run being resumed (or None); every process resumes from its checkpoints.
    """
    resumed = run.path / "checkpoints" if run is not None else None
    return (begin() if par.writer else None), resumed


def broadcast(obj, par: Parallel):
    """Process 0's ``obj`` on every process (e.g. validation metrics: all take the same decisions)."""
    if not par.active:
        return obj
    import torch.distributed as dist

    box = [obj if par.writer else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(value: float, par: Parallel) -> float:
    """The sum of ``value`` over every process."""
    if not par.active:
        return value
    import torch.distributed as dist

    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t[0])


def barrier(par: Parallel) -> None:
    if par.active:
        import torch.distributed as dist

        dist.barrier()


EpochCallback = Callable[[dict], None]


def reporters(runtime: RuntimeConfig, progress, on_epoch) -> tuple[Progress, EpochCallback]:
    """The callbacks a run reports to: the caller's, or silent ones (``runtime.progress = false`` or none given).

    ``progress`` is a callable ``progress(stage, done, total)`` (:mod:`sobre.base`); None or False
    mean none. The library never draws bars itself: ``True`` is refused.
    """
    if progress is True:
        raise TypeError("progress must be a callable progress(stage, done, total) (the CLI draws bars from it), "
                        "or None")
    if not runtime.progress:
        return no_progress, _no_epoch
    return (progress or no_progress), (on_epoch or _no_epoch)


def _no_epoch(row: dict) -> None:
    """The default epoch callback: nothing."""


def epoch_line(row: dict, keys=None) -> str:
    """``epoch 3  train_loss 0.6931  val_auc 0.75`` (every value, or those of ``keys``)."""
    items = [(k, v) for k, v in row.items() if v is not None and k != "group" and (keys is None or k in keys)]
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in items)


def autocast(enabled: bool, device_type: str = "cpu"):
    return torch.autocast(device_type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def device_of(model: nn.Module) -> torch.device:
    """Where the model's parameters are (CPU for a model without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def to_device_batch(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    if channels_last and x.ndim == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    if channels_last and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def prepare_model(model: nn.Module, spatial_dims: int, channels_last: bool) -> nn.Module:
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d if spatial_dims == 3 else torch.channels_last)
    return model


# ------------------------------------------------------------------------------------------ batches
def batches(n: int, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
            drop_last: bool = False) -> list[np.ndarray]:
    """Index batches over ``range(n)``; the order depends on ``(seed, epoch)`` only.

    ``drop_last`` drops a final batch smaller than 2 (batch norm cannot train on one sample)
    or, when ``drop_last == "full"``, any incomplete final batch.
    """
    if shuffle:
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), 0xBA7]))
        order = rng.permutation(n)
    else:
        order = np.arange(n)
    out = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if out and drop_last and (len(out[-1]) < 2 or (drop_last == "full" and len(out[-1]) < batch_size)):
        out = out[:-1]
    return out


def stack_rows(images, rows: np.ndarray) -> torch.Tensor:
    """Rows of a (memory-mapped) array → a float32 tensor."""
    rows = np.asarray(rows)
    order = np.argsort(rows)
    block = np.asarray(images[rows[order]], dtype=np.float32)
    out = np.empty_like(block)
    out[order] = block
    return torch.from_numpy(out)


def prefetched(items, enabled: bool = True, depth: int = 2):
    """Iterate ``items`` (a generator) in one background thread, ``depth`` items ahead.

    One producer keeps the order of every random draw, so results do not depend on ``enabled``.
    Exceptions of the producer are re-raised in the consumer.
    """
    if not enabled:
        yield from items
        return
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce():
        try:
            for it in items:
                if stop.is_set():
                    return
                q.put(it)
            q.put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put(exc)

    th = threading.Thread(target=produce, daemon=True)
    th.start()
    try:
        while True:
            it = q.get()
            if it is done:
                return
            if isinstance(it, BaseException):
                raise it
            yield it
    finally:
        stop.set()
        while th.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                th.join(timeout=0.05)


# ------------------------------------------------------------------------------------ optimisation
def make_optimizer(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int, epochs: int):
    total = max(1, steps_per_epoch * epochs)
    warm = steps_per_epoch * cfg.warmup_epochs

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if cfg.scheduler == "none":
            return 1.0
        t = (step - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def planned_epochs(cfg: OptimConfig, steps_per_epoch: int) -> int:
    """``epochs``, raised so that small datasets still get ``min_steps`` optimiser steps."""
    if cfg.min_steps and steps_per_epoch:
        return max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch))
    return cfg.epochs


# ------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


# ------------------------------------------------------------------------------------------- loop
@dataclass
class LoopResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_value: float | None = None
    stopped_early: bool = False
    interrupted: bool = False
    epochs_run: int = 0
    best_state: dict | None = None  # weights of the best epoch (kept in memory when there is no ckpt_dir)


def _improved(value, best, mode, min_delta) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def run_epochs(*, model: nn.Module, optimizer, scheduler, n_epochs: int,
               train_one_epoch: Callable[[int], dict], validate: Callable[[int], dict] | None,
               monitor: str | None, mode: str = "max", patience: int | None = None, min_delta: float = 0.0,
               ckpt_dir: Path | None = None, resume: bool = False, interrupt_after: int | None = None,
               on_epoch: Callable[[dict], None] | None = None, on_resume: Callable[[int], None] | None = None,
               extra_state: Callable[[], dict] | None = None, validate_first: bool = False,
               write: bool = True) -> LoopResult:
    """Epochs with validation, early stopping, checkpoints and resume.

    Parameters
    ----------
    train_one_epoch : callable(epoch) -> dict
        Trains one epoch; returns metrics such as ``train_loss`` and ``train_samples_per_s``.
    validate : callable(epoch) -> dict, optional
        Validation metrics (``val_...``) of the current weights.
    monitor, mode, patience, min_delta
        Early stopping on ``monitor`` (``"min"`` or ``"max"``); ``patience=None`` disables it; the
        best weights go to ``best.pt`` either way (the last epoch's when nothing is monitored).
    ckpt_dir : Path, optional
        Where ``last.pt`` / ``best.pt`` go.
    resume : bool
        Continue from ``ckpt_dir/last.pt`` when it exists.
    interrupt_after : int, optional
        Stop (as if interrupted) after this many epochs in this call; resume later.
    validate_first : bool
        Validate the initial weights as epoch 0 (kept as the best if no epoch beats them).
    write : bool
        False: read ``ckpt_dir`` to resume, never write it (data-parallel processes other than 0);
        the best weights are kept in memory.
    """
    res = LoopResult()
    start = 0
    bad = 0
    last = ckpt_dir / "last.pt" if ckpt_dir else None
    best_path = ckpt_dir / "best.pt" if ckpt_dir else None
    if resume and last is not None and last.exists():
        st = load_checkpoint(last)
        model.load_state_dict(st["model"])
        optimizer.load_state_dict(st["optimizer"])
        scheduler.load_state_dict(st["scheduler"])
        res.history = st["history"]
        res.best_epoch, res.best_value, bad = st["best_epoch"], st["best_value"], st["bad_epochs"]
        start = st["epoch"] + 1
        if on_resume is not None:
            on_resume(st["epoch"])
        if st.get("stopped"):
            res.stopped_early = st.get("stopped_early", False)
            res.epochs_run = start
            return res
    if not write:
        last = best_path = None
    if validate_first and start == 0 and validate is not None and not res.history:
        row0 = {"epoch": 0, **validate(-1)}
        value0 = row0.get(monitor) if monitor else None
        if value0 is not None:
            res.best_epoch, res.best_value = 0, value0
            if best_path is None:
                res.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                save_checkpoint(best_path, {"model": model.state_dict(), "epoch": -1})
        row0["best_epoch"] = res.best_epoch
        res.history.append(row0)
        if on_epoch is not None:
            on_epoch(row0)
    done_here = 0
    for epoch in range(start, n_epochs):
        t0 = time.perf_counter()
        row = {"epoch": epoch + 1}
        row.update(train_one_epoch(epoch))
        if validate is not None:
            row.update(validate(epoch))
        row["lr"] = float(optimizer.param_groups[0]["lr"])
        row["seconds"] = round(time.perf_counter() - t0, 3)
        if monitor and epoch == start and validate is not None and monitor not in row:
            from sobre.errors import ConfigError

            raise ConfigError(f"optim.early_stopping.metric = '{monitor}' is not a metric of this task",
                              expected="one of: " + ", ".join(k for k in row if k.startswith("val_")),
                              found=repr(monitor), fix="choose one of those, or \"auto\"")
        value = row.get(monitor) if monitor else None
        improved = _improved(value, res.best_value, mode, min_delta) if monitor else True
        if improved:
            res.best_epoch, res.best_value, bad = epoch + 1, value, 0
            if best_path is None:
                res.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                save_checkpoint(best_path, {"model": model.state_dict(), "epoch": epoch, **(extra_state() if
                                                                                           extra_state else {})})
        else:
            bad += 1
        row["best_epoch"] = res.best_epoch
        res.history.append(row)
        stop = patience is not None and monitor is not None and bad >= patience
        finished = stop or epoch + 1 >= n_epochs
        if last is not None:
            save_checkpoint(last, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                   "scheduler": scheduler.state_dict(), "history": res.history, "epoch": epoch,
                                   "best_epoch": res.best_epoch, "best_value": res.best_value, "bad_epochs": bad,
                                   "stopped": finished, "stopped_early": stop})
        if on_epoch is not None:
            on_epoch(row)
        done_here += 1
        if stop:
            res.stopped_early = True
            break
        if interrupt_after is not None and done_here >= interrupt_after and not finished:
            res.interrupted = True
            break
    res.epochs_run = len(res.history)
    return res


def sliding_window_probs(model: nn.Module, x: torch.Tensor, *, roi, overlap: float, bf16: bool,
                         channels_last: bool, sw_batch_size: int = 4) -> torch.Tensor:
    """Class probabilities ``(1, K, *spatial)`` (fp32) of one image ``x`` ``(1, C, *spatial)``.

    MONAI sliding windows of ``roi`` voxels (Gaussian blending, ``overlap``), ``sw_batch_size``
    windows at a time: memory is bounded by the windows and the output, whatever the image size.
    The softmax runs in fp32, outside autocast.
    """
    from monai.inferers import sliding_window_inference

    model.eval()
    dev = device_of(model)
    with torch.inference_mode():
        with autocast(bf16, dev.type):
            logits = sliding_window_inference(to_device_batch(x.to(dev), channels_last), roi_size=list(roi),
                                              sw_batch_size=sw_batch_size, predictor=model, overlap=overlap,
                                              mode="gaussian")
        return torch.softmax(logits.float(), 1).cpu()


def timed_inference(model: nn.Module, images, rows: np.ndarray, *, batch_size: int, bf16: bool,
                    channels_last: bool, fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    progress: Progress | None = None, desc: str = "inference",
                    covariates: np.ndarray | None = None) -> tuple[torch.Tensor, float]:
    """Forward passes over ``rows`` without gradients; returns (stacked outputs in fp32, samples/s).

    ``covariates`` (indexed like ``images``) are passed as the model's second argument;
    ``progress(desc, done, total)`` counts images.
    """
    progress = progress or no_progress
    model.eval()
    dev = device_of(model)
    outs = []
    t0 = time.perf_counter()
    done = 0
    with torch.inference_mode(), autocast(bf16, dev.type):
        for b in range(0, len(rows), batch_size):
            rb = rows[b:b + batch_size]
            x = to_device_batch(stack_rows(images, rb).to(dev), channels_last)
            if covariates is not None:
                y = model(x, torch.from_numpy(np.asarray(covariates[rb], np.float32)).to(dev))
            else:
                y = fn(x) if fn is not None else model(x)
            y = y if not isinstance(y, tuple) else y[0]
            outs.append(y.float().cpu())
            done += len(rb)
            progress(desc, done, len(rows))
    dt = time.perf_counter() - t0
    out = torch.cat(outs) if outs else torch.empty(0)
    return out, (len(rows) / dt if dt > 0 else float("nan"))
