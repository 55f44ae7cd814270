"""The learning rate over a run: the official 'linear' policy (constant for
``n_epochs``, then linear decay to zero over ``n_epochs_decay``), with an optional
linear warm-up over the first ``n_epochs_warmup`` of the ``n_epochs``, all fitted to
the run's length. Plain arithmetic on an OptimConfig, no torch: the driver logs it before any
worker starts, and ``training.set_step_lr`` applies it."""

from __future__ import annotations

from cut_core.config import OptimConfig


def data_steps_per_epoch(size_a: int, size_b: int, *, batch_size: int, workers: int = 1) -> int:
    """Steps in one data epoch: max(|A|, |B|) images per domain, as in the official
    unaligned loader, spread over ``workers`` data-parallel ranks of ``batch_size`` each.
    Here, not in the ingest pipeline, so processes without Ray (the quality bench's
    trainers) count epochs the same way."""
    return max(1, max(size_a, size_b) // (batch_size * workers))


def lr_factor(optim: OptimConfig, epoch: int) -> float:
    """Official 'linear' policy at 0-based schedule ``epoch``: 1 for ``n_epochs`` epochs,
    then down by 1/(n_epochs_decay + 1) per epoch (the last epoch trains at 1/(decay+1)).
    A warm-up mirrors the decay: epoch e < n_epochs_warmup trains at (e+1)/(warmup+1)."""
    warm = optim.n_epochs_warmup
    ramp = (epoch + 1) / float(warm + 1) if epoch < warm else 1.0
    return ramp * (1.0 - max(0, epoch + 1 - optim.n_epochs) / float(optim.n_epochs_decay + 1))


def schedule_epoch(optim: OptimConfig, step: int, total_steps: int) -> int:
    """The epoch of the LR schedule that 0-based ``step`` of a ``total_steps`` run is in:
    the config's ``n_epochs + n_epochs_decay`` epochs spread evenly over the run.

    For a run exactly that many data epochs long (total_steps = epochs * steps_per_epoch)
    this is ``step // steps_per_epoch``, the official schedule unchanged. A shorter run
    gets the same shape, compressed: with the epoch counts taken literally, a 1500-step
    FastCUT run on 64 images (23 epochs of its 150 + 50) never reached its decay and
    ended on a swinging G (docs/quality.md); a longer run never reaches a negative LR."""
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps} must be >= 1")
    return min(step, total_steps - 1) * (optim.n_epochs + optim.n_epochs_decay) // total_steps


def _steps_before_epoch(optim: OptimConfig, epoch: int, total_steps: int) -> int:
    """How many of the run's steps fall in schedule epochs before ``epoch``."""
    total_epochs = optim.n_epochs + optim.n_epochs_decay
    return min(total_steps, -(-epoch * total_steps // total_epochs))


def constant_steps(optim: OptimConfig, total_steps: int) -> int:
    """How many steps of the run come before the decay (the warm-up's included)."""
    return _steps_before_epoch(optim, optim.n_epochs, total_steps)


def warmup_steps(optim: OptimConfig, total_steps: int) -> int:
    """How many steps of the run are in the warm-up (0 without one)."""
    return _steps_before_epoch(optim, optim.n_epochs_warmup, total_steps)


def describe_schedule(optim: OptimConfig, total_steps: int, steps_per_epoch: int) -> str:
    """One line on what the LR does over this run, for the console and MLflow."""
    warm, flat = warmup_steps(optim, total_steps), constant_steps(optim, total_steps)
    if flat < total_steps:
        shape = f"constant for {flat - warm} steps, then a linear decay over the last {total_steps - flat}"
    else:
        shape = f"constant for all {total_steps} steps" if not warm else f"constant for the other {total_steps - warm}"
    if warm:
        shape = f"a linear warm-up over the first {warm} steps, then {shape}"
    data_epochs = total_steps / max(1, steps_per_epoch)
    fitted = "" if total_steps == (optim.n_epochs + optim.n_epochs_decay) * steps_per_epoch else (
        f" (the config's {optim.n_epochs}+{optim.n_epochs_decay} epochs fitted to this run's {total_steps} steps, "
        f"{data_epochs:.3g} epochs of its data)")
    plateau = (f"; cut x{optim.lr_plateau_factor:g} after {optim.lr_plateau_patience} evaluations without a new "
               f"best of the val metric, before the decay, down to x{optim.lr_plateau_min:g}"
               if optim.lr_plateau_patience else "")
    return f"lr {optim.lr:g} {shape}{fitted}{plateau}"
