"""A per-epoch progress bar (tqdm) showing the loss and images/s, and the one-line epoch summary."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import IO, Any

from tqdm import tqdm

# Seconds between lines when the output is a file or pipe (CI logs, nohup, Slurm).
NON_TTY_INTERVAL_S = 30.0


class _Lines:
    """File wrapper for non-terminals: tqdm's carriage-return redraws become whole lines."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.muted = True  # drop tqdm's initial "0%" draw: it says nothing in a log

    def write(self, text: str) -> int:
        if self.muted:
            return len(text)
        for part in text.replace("\r", "\n").split("\n"):
            part = part.replace("\x1b[A", "").rstrip()
            if part:
                self.stream.write(part + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def _is_tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class EpochProgress:
    """Progress of one training epoch: steps done, last loss, images/s.

    On a terminal the bar redraws in place (every 0.1 s at most); on a file or pipe it prints a
    whole line every ``NON_TTY_INTERVAL_S`` seconds and a final line at :meth:`close` (so one
    line for a short epoch), never a line per step. Disabled (DDP ranks other than 0, ``--quiet``)
    it prints nothing.

    Reading a loss from the device forces a host sync; pass ``loss`` only every few steps
    (``None`` otherwise) and the bar keeps showing the last value.

    Args:
        total_steps: optimizer steps in the epoch.
        epoch: epoch number shown in the description.
        enabled: print anything at all.
        total_epochs: if given, the description reads ``epoch 3/300``.
        file: output stream (default ``sys.stderr``, tqdm's default).
        mininterval: seconds between redraws; default 0.1 on a terminal, else
            ``NON_TTY_INTERVAL_S``.
    """

    def __init__(self, total_steps: int, epoch: int, enabled: bool = True, *,
                 total_epochs: int | None = None, file: IO[str] | None = None,
                 mininterval: float | None = None) -> None:
        self.enabled = enabled
        self.images = 0
        self.steps = 0
        self.loss: float | None = None
        self._start = time.perf_counter()
        self._bar = None
        if not enabled:
            return
        stream = file if file is not None else sys.stderr
        tty = _is_tty(stream)
        if mininterval is None:
            mininterval = 0.1 if tty else NON_TTY_INTERVAL_S
        desc = f"epoch {epoch}" + (f"/{total_epochs}" if total_epochs else "")
        out = stream if tty else _Lines(stream)
        self._bar = tqdm(
            total=total_steps, desc=desc, unit="step", file=out, mininterval=mininterval,
            maxinterval=max(mininterval, 10.0), dynamic_ncols=tty, ncols=None if tty else 100,
            ascii=not tty, leave=True)
        if isinstance(out, _Lines):
            out.muted = False

    @property
    def elapsed_s(self) -> float:
        """Seconds since the bar was created."""
        return time.perf_counter() - self._start

    @property
    def images_per_s(self) -> float:
        """Images per second since the bar was created (no device sync: indicative only)."""
        elapsed = self.elapsed_s
        return self.images / elapsed if elapsed > 0 else 0.0

    def update(self, n_images: int, loss: float | None = None) -> None:
        """Record one finished step.

        Args:
            n_images: images in the step (global batch under DDP, for a global rate).
            loss: the step's loss as a python float, or ``None`` to keep showing the last one.
        """
        self.images += n_images
        self.steps += 1
        if loss is not None:
            self.loss = float(loss)
        if self._bar is None:
            return
        self._bar.set_postfix_str(self._postfix(), refresh=False)  # refresh obeys mininterval
        self._bar.update(1)

    def _postfix(self) -> str:
        loss = "?" if self.loss is None else f"{self.loss:.4f}"
        return f"loss={loss}, {self.images_per_s:,.0f} img/s"

    def close(self, loss: float | None = None) -> None:
        """Draw the final state and release the bar (idempotent).

        Args:
            loss: optional value to show on the final line (e.g. the epoch's mean loss).
        """
        if loss is not None:
            self.loss = float(loss)
        if self._bar is not None:
            self._bar.set_postfix_str(self._postfix(), refresh=False)
            self._bar.close()
            self._bar = None

    def __enter__(self) -> EpochProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# The loss terms a method may log (record["train"] keys) and their console labels.
TERM_LABELS = (("ce_branches", "CE"), ("ce_ensemble", "CE(ens)"), ("kl", "KL"))


def _short(name: str) -> str:
    return f"b{name[7:]}" if name.startswith("branch_") else "ens" if name == "ensemble" else name


def epoch_line(record: Mapping[str, Any], total_epochs: int | None = None) -> str:
    """One console line summarising an epoch's metrics record (see ``engine.metrics``).

    Example::

        epoch  3/12  loss 1.204 (CE 0.912, CE(ens) 0.287, KL 0.0006)  | test top-1 b0 95.8%
        b1 96.1% b2 95.6% ens 96.4% | lr 0.1  2,531 img/s  0.6 s

    (one line; the loss terms the method logs: CE sums the branches, KL is before the w·T²
    factor; test accuracy only on epochs that evaluated; with an input pipeline that keeps
    stats (ImageNet) it ends with ``| step 2,600 img/s, input 2,540 img/s, waited for data
    2%``).

    Args:
        record: the epoch's record: ``epoch``, ``train`` terms, ``lr``, ``images_per_s``,
            ``epoch_time_s`` and, if evaluated, ``test_acc``; optionally ``input`` and
            ``step_images_per_s``.
        total_epochs: shown as ``epoch 3/12`` when given.

    Returns:
        The line, without a newline.
    """
    width = len(str(total_epochs)) if total_epochs else 1
    head = f"epoch {record['epoch']:>{width}}" + (f"/{total_epochs}" if total_epochs else "")
    train = record.get("train") or {}
    parts = [head]
    if train:
        shown = [f"{label} {train[key]:.4g}" for key, label in TERM_LABELS if key in train]
        parts.append(f"loss {train.get('loss', float('nan')):.4g}"
                     + (f" ({', '.join(shown)})" if shown else ""))
    acc = record.get("test_acc")
    if acc:
        parts.append("| test top-1 " + " ".join(f"{_short(k)} {100 * v:.1f}%"
                                                for k, v in acc.items()))
    parts.append(f"| lr {record.get('lr', float('nan')):.3g}  "
                 f"{record.get('images_per_s', 0):,.0f} img/s  "
                 f"{record.get('epoch_time_s', 0):.1f} s")
    source = record.get("input")
    if source:
        parts.append(f"| step {record.get('step_images_per_s', 0):,.0f} img/s, input "
                     f"{source.get('images_per_s', 0):,.0f} img/s, waited for data "
                     f"{100 * source.get('wait_fraction', 0):.0f}%")
    return "  ".join(parts)
