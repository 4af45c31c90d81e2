"""ImageNetLoader: batches from a DALI pipeline with the DeviceLoader interface
(`epoch_batches(epoch)`, `eval_batches()`, `steps_per_epoch`), so the trainer can use either.

Order, sharding and resume follow DeviceLoader exactly. Each rank holds a fixed shard of the
split (`shard_indices`: disjoint, equal-sized when training so every rank runs the same number of
steps); epoch e visits the shard in a permutation seeded from (seed, e, rank) and DALI's own
randomness (crop windows, flips) is seeded from the same numbers. A pipeline is built per epoch
from that order, so epoch e yields the same batches whether or not training restarted before it:
resuming from an epoch-boundary checkpoint restarts the epoch deterministically (there is no
mid-epoch position to restore, and none is needed).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..cpus import cores_per_process
from ..device import ShardLoader, derive_seed, shard_indices
from ..errors import CorruptDatasetError
from .handover import HandOver
from .layout import ImageNetLayout, ImageSplit
from .pipeline import IMAGENET_MEAN, IMAGENET_STD, PipelineSpec, build_pipeline, import_dali

Batch = tuple[torch.Tensor, torch.Tensor]
DALI_SEED_BITS = 31  # DALI takes a signed seed; stay in the range every version accepts


@dataclass
class InputStats:
    """What the consumer saw of the input pipeline during one pass.

    Attributes:
        images, batches: delivered so far.
        elapsed_s: from the pass's first request to its last delivered batch (the consumer's
            own work included).
        wait_s: host time the consumer spent inside the loader: building the pipeline and
            waiting for DALI to hand over a batch. ~0 when the pipeline keeps ahead of the
            consumer. With mixed decoding DALI hands batches over stream-ordered, so GPU
            decoding still running at that moment is not counted here: it would show as a
            longer training step instead.
        build_s: the part of wait_s spent building the pipeline.
    """

    images: int = 0
    batches: int = 0
    elapsed_s: float = 0.0
    wait_s: float = 0.0
    build_s: float = 0.0

    @property
    def images_per_s(self) -> float:
        """Delivered images per second; the pipeline's own rate when wait_fraction is ~1, a
        lower bound of it otherwise (the benchmark measures it alone)."""
        return self.images / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def wait_fraction(self) -> float:
        """Fraction of the pass the consumer spent waiting for data."""
        return self.wait_s / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "images_per_s": self.images_per_s,
                "wait_fraction": self.wait_fraction}


def default_num_threads() -> int:
    """DALI threads per process: this process's CPUs shared among the ranks on the node."""
    return cores_per_process()


class ImageNetLoader(ShardLoader):
    """Fixed-shape batches of one split of an ImageNet-layout folder, decoded by DALI.

    Args:
        split: the split's files and labels (`find_imagenet(...).train` or `.val`).
        batch_size: images per batch *per rank*.
        device: where batches are returned; CUDA → DALI decodes there (device="mixed"),
            otherwise DALI's CPU-only mode.
        seed: run seed; the shard split, each epoch's order and DALI's randomness derive from it.
        augment: `epoch_batches` uses random-resized-crop + flip; else resize + centre crop.
        drop_last: training mode: equal shards and only full batches. False: shards cover the
            whole split and the last batch of `eval_batches` may be smaller.
        image_size: output height = width (224 for ImageNet; small sizes for tests).
        rank, world_size: this process's place in data-parallel training.
        num_threads: DALI CPU threads (default: this process's CPUs / LOCAL_WORLD_SIZE).
        prefetch: batches DALI prepares ahead of the consumer.
        dtype: torch.uint8 (raw pixels, cropped and flipped, not normalised), float32, or a
            lower float (bfloat16, float16: normalised in float32 by DALI, then cast).
        channels_last: NCHW batches in channels_last memory (DALI writes NHWC directly).
        mean, std: per-channel statistics in [0, 1] units.
    """

    def __init__(self, split: ImageSplit, batch_size: int, *, device: torch.device | str,
                 seed: int, augment: bool, drop_last: bool, image_size: int = 224,
                 rank: int = 0, world_size: int = 1, num_threads: int | None = None,
                 prefetch: int = 3, dtype: torch.dtype = torch.float32,
                 channels_last: bool = False, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        import_dali()  # fail here, with the install command, rather than at the first batch
        if batch_size < 1 or image_size < 1 or prefetch < 1:
            raise ValueError(f"batch_size, image_size and prefetch must be >= 1, got "
                             f"{batch_size}, {image_size}, {prefetch}")
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        if dtype != torch.uint8 and not dtype.is_floating_point:
            raise ValueError(f"dtype must be torch.uint8 or floating, got {dtype}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values with std > 0, got {mean}, {std}")
        self.split = split
        self.indices = shard_indices(len(split), rank, world_size, seed,
                                     equal=drop_last).numpy()
        if drop_last and len(self.indices) < batch_size:
            raise ValueError(f"rank {rank}'s shard holds {len(self.indices)} images, fewer than "
                             f"batch_size {batch_size}: with drop_last no batch would be made")
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.batch_size, self.image_size, self.augment = batch_size, image_size, augment
        self.drop_last, self.seed, self.rank, self.world_size = drop_last, seed, rank, world_size
        self.num_threads = num_threads or default_num_threads()
        self.prefetch, self.dtype, self.channels_last = prefetch, dtype, channels_last
        self.mean, self.std = tuple(mean), tuple(std)
        self.stats = InputStats()  # the current (or last) pass
        self._lines: np.ndarray | None = None
        self._scratch = tempfile.TemporaryDirectory(prefix="one_fast_imagenet_")

    @property
    def num_samples(self) -> int:
        """Images held by this rank."""
        return len(self.indices)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image in a batch."""
        return (3, self.image_size, self.image_size)

    def _epoch_positions(self, epoch: int) -> np.ndarray:
        """Positions within this rank's shard that epoch `epoch` yields, in order."""
        gen = np.random.default_rng(derive_seed(self.seed, epoch, self.rank))
        positions = gen.permutation(self.num_samples)
        return positions[: self.steps_per_epoch * self.batch_size] if self.drop_last else positions

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Global indices (into the split) of the images epoch `epoch` yields, in order."""
        return self.indices[self._epoch_positions(epoch)]

    def epoch_batches(self, epoch: int) -> Iterator[Batch]:
        """Yield `steps_per_epoch` (images, labels) batches of epoch `epoch`.

        Images are (batch_size, 3, size, size) of `dtype` (channels_last memory if asked),
        labels int64 (batch_size,), both on `device`; each image of the shard appears at most
        once. The same epoch always yields the same batches.

        Raises:
            CorruptDatasetError: an image cannot be decoded (the message names the file).
        """
        seed = derive_seed(self.seed, epoch, self.rank) % (1 << DALI_SEED_BITS)
        # Messages count epochs from 1, as the trainer's lines and metrics.jsonl do.
        yield from self._run(self._epoch_positions(epoch), self.augment, seed,
                             f"epoch {epoch + 1}")

    def eval_batches(self) -> Iterator[Batch]:
        """Yield every image of this rank's shard once, in order, with the evaluation
        transform (resize + centre crop); the last batch may be smaller."""
        yield from self._run(np.arange(self.num_samples), False, 0, "evaluation")

    def _file_list_lines(self) -> np.ndarray:
        """DALI file-list lines ("<path> <label>\\n", bytes) of the shard, made once: joining
        these per epoch costs ~0.1 s for ImageNet where formatting 1.28M lines costs seconds."""
        if self._lines is None:
            files, labels = self.split.files, self.split.labels
            lines = [f"{files[i]} {labels[i]}\n" for i in self.indices]
            bad = next((line for line in lines if line.count("\n") != 1), None)
            if bad is not None:
                raise ValueError(f"a file name with a line break cannot be listed for DALI: "
                                 f"{bad!r}")
            self._lines = np.array([line.encode() for line in lines], dtype=object)
        return self._lines

    def _spec(self, positions: np.ndarray, augment: bool, seed: int,
              list_path: Path) -> PipelineSpec:
        list_path.write_bytes(b"".join(self._file_list_lines()[positions]))
        return PipelineSpec(
            file_root=self.split.root, file_list=list_path, batch_size=self.batch_size,
            image_size=self.image_size, augment=augment,
            device_id=self.device.index if self.device.type == "cuda" else None,
            num_threads=self.num_threads, prefetch=self.prefetch, seed=seed,
            pad_last_batch=len(positions) % self.batch_size != 0,
            float_output=self.dtype != torch.uint8, channels_last=self.channels_last,
            mean=self.mean, std=self.std)

    def _run(self, positions: np.ndarray, augment: bool, seed: int,
             what: str) -> Iterator[Batch]:
        stats = self.stats = InputStats()
        start = time.perf_counter()
        spec = self._spec(positions, augment, seed, Path(self._scratch.name) / "files.txt")
        pipe = build_pipeline(spec)
        hand_over = HandOver(self.device)
        stats.build_s = time.perf_counter() - start
        stats.wait_s = stats.build_s
        b = self.batch_size
        try:
            for step in range(math.ceil(len(positions) / b)):
                t0 = time.perf_counter()
                try:
                    images_tl, labels_tl = pipe.run()
                except RuntimeError as err:
                    raise self._decode_failure(positions, step, what, err) from err
                images = hand_over(images_tl)
                labels = hand_over(labels_tl).view(-1).to(torch.int64)
                n = min(b, len(positions) - step * b)  # the padded tail of the last eval batch
                images, labels = images[:n], labels[:n]
                if self.channels_last:
                    images = images.permute(0, 3, 1, 2)  # NCHW view of NHWC memory
                if images.dtype != self.dtype:
                    images = images.to(self.dtype)
                now = time.perf_counter()
                stats.wait_s += now - t0
                stats.elapsed_s = now - start
                stats.images += n
                stats.batches += 1
                yield images, labels
        finally:
            hand_over.close()  # every copy has run before DALI's buffers go
            del pipe  # frees DALI's buffers (device memory in mixed mode) before the next pass

    def _decode_failure(self, positions: np.ndarray, step: int, what: str,
                        err: RuntimeError) -> Exception:
        """The error to raise when DALI fails at `step`: CorruptDatasetError naming the file
        when one of the batches that may have been in flight holds an undecodable one."""
        b = self.batch_size
        # DALI may have been reading up to `prefetch` batches ahead, plus one in its reader.
        window = self.indices[positions[step * b:(step + self.prefetch + 2) * b]]
        paths = [self.split.root / self.split.files[i] for i in window]
        bad = find_undecodable(paths)
        if bad is not None:
            path, reason = bad
            return CorruptDatasetError(f"{path} cannot be decoded as an image ({reason}); "
                                       f"remove or replace it ({what}, batch {step})")
        first, last = paths[0], paths[-1]
        return RuntimeError(f"DALI failed in {what}, batch {step} (files {first} ... {last} "
                            f"decode on the CPU, so the failure is elsewhere): {err}")


def find_undecodable(paths: Sequence[Path]) -> tuple[Path, str] | None:
    """The first of `paths` that cannot be read or that DALI's CPU decoder rejects, with the
    reason; None when all decode. One image at a time: slow, for locating a failure only."""
    fn, types, pipeline_def = import_dali()

    @pipeline_def(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1,
                  exec_async=False, exec_pipelined=False)
    def decode_one():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8)
        return fn.decoders.image(encoded, device="cpu", output_type=types.RGB)

    pipe = decode_one()
    pipe.build()
    for path in paths:
        try:
            data = np.frombuffer(Path(path).read_bytes(), dtype=np.uint8)
        except OSError as e:
            return Path(path), f"unreadable: {e.strerror or e}"
        try:
            pipe.feed_input("encoded", [data])
            pipe.run()
        except RuntimeError as e:
            reasons = [line.strip() for line in str(e).splitlines() if "failure" in line]
            return Path(path), "DALI's decoder rejected it" + (f": {reasons[0]}" if reasons
                                                                else "")
    return None


def imagenet_loaders(layout: ImageNetLayout, batch_size: int, *, device: torch.device | str,
                     seed: int, image_size: int = 224, rank: int = 0, world_size: int = 1,
                     eval_batch_size: int | None = None, shard_eval: bool = False,
                     num_threads: int | None = None, prefetch: int = 3,
                     channels_last: bool = False,
                     dtype: torch.dtype = torch.float32) -> tuple[ImageNetLoader, ImageNetLoader]:
    """Training and validation loaders for an ImageNet folder (the `loaders_for` of ImageNet).

    Args:
        layout: `find_imagenet(data_dir)`.
        batch_size: per-rank training batch.
        device, seed, image_size, rank, world_size, num_threads, prefetch, channels_last,
            dtype: as for ImageNetLoader.
        eval_batch_size: validation batch (default: batch_size).
        shard_eval: split the validation set across ranks (covering it exactly once in total)
            instead of giving every rank all of it.

    Returns:
        (train_loader, val_loader); iterate `train_loader.epoch_batches(epoch)` and
        `val_loader.eval_batches()`.
    """
    common = dict(device=device, seed=seed, image_size=image_size, num_threads=num_threads,
                  prefetch=prefetch, channels_last=channels_last, dtype=dtype)
    train = ImageNetLoader(layout.train, batch_size, augment=True, drop_last=True, rank=rank,
                           world_size=world_size, **common)
    val = ImageNetLoader(layout.val, eval_batch_size or batch_size, augment=False,
                         drop_last=False, rank=rank if shard_eval else 0,
                         world_size=world_size if shard_eval else 1, **common)
    return train, val
