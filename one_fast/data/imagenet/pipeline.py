"""The DALI graphs: file list → decode → (random-resized-crop | resize + centre crop) → flip →
normalise, with decoding on the GPU (device="mixed": nvJPEG / the hardware JPEG decoder) or
all on the CPU (DALI's CPU-only mode, device_id=None).

DALI is an optional dependency (the "imagenet" extra: nvidia-dali-cuda130); it is imported only
when a pipeline is built, and its absence is reported by DaliNotInstalledError with the install
command.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = ('pip install nvidia-dali-cuda130 (in a one_fast checkout: pip install '
                '--no-build-isolation -e ".[imagenet]"); DALI also runs without a GPU, in its '
                'CPU mode')

# torchvision's ImageNet statistics, in [0, 1] units.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_SCALE = (0.08, 1.0)  # random-resized-crop: area fraction of the image
CROP_RATIO = (3 / 4, 4 / 3)  # and aspect ratio (width / height)
CROP_ATTEMPTS = 10  # tries before falling back to the whole image (as torchvision)
EVAL_RESIZE_RATIO = 256 / 224  # evaluation: shorter side to 256 for a 224 centre crop


class DaliNotInstalledError(ImportError):
    """NVIDIA DALI, which the ImageNet pipeline runs on, is not importable."""


def import_dali():
    """(nvidia.dali.fn, nvidia.dali.types, nvidia.dali.pipeline_def), or DaliNotInstalledError."""
    try:
        from nvidia.dali import fn, pipeline_def, types
    except ImportError as e:
        raise DaliNotInstalledError(
            f"the ImageNet input pipeline needs NVIDIA DALI, which is not importable ({e}); "
            f"install it with: {INSTALL_HINT}") from e
    return fn, types, pipeline_def


def dali_available() -> bool:
    """Whether DALI can be imported here."""
    try:
        import_dali()
    except DaliNotInstalledError:
        return False
    return True


@dataclass(frozen=True)
class PipelineSpec:
    """Everything that shapes one DALI pipeline.

    Attributes:
        file_root: folder the file list's paths are relative to.
        file_list: text file of "<relative path> <label>" lines, read in order.
        batch_size: images per batch.
        image_size: output height and width.
        augment: random-resized-crop + random flip (training); else resize + centre crop.
        device_id: CUDA device for mixed decoding, or None for DALI's CPU-only mode.
        num_threads: DALI's CPU worker threads (file reading, CPU decoding and augmentation).
        prefetch: batches DALI prepares ahead of the consumer.
        seed: DALI's seed (crop windows, flips); the same seed gives the same batches.
        pad_last_batch: repeat the last file to fill the final batch (evaluation).
        float_output: normalised float32 output; else uint8 pixels (crop and flip only).
        channels_last: HWC per image (NHWC batches); else CHW.
        mean, std: per-channel statistics in [0, 1] units for normalising.
    """

    file_root: Path
    file_list: Path
    batch_size: int
    image_size: int
    augment: bool
    device_id: int | None
    num_threads: int
    prefetch: int
    seed: int
    pad_last_batch: bool
    float_output: bool
    channels_last: bool
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD


def eval_resize(image_size: int) -> int:
    """Shorter side before the centre crop: 256 for 224, in proportion for other sizes."""
    return round(image_size * EVAL_RESIZE_RATIO)


def build_pipeline(spec: PipelineSpec):
    """A built DALI pipeline whose outputs are (images, labels) for `spec`.

    Images: (batch, size, size, 3) HWC or (batch, 3, size, size) CHW, float32 normalised as
    (x / 255 - mean) / std or uint8. Labels: int32 (batch, 1). Both on the GPU when
    spec.device_id is set. Greyscale and CMYK JPEGs decode to RGB.
    """
    fn, types, pipeline_def = import_dali()
    gpu = spec.device_id is not None
    size = spec.image_size

    # exec_dynamic: the executor of DALI 2.x, whose outputs stay alive while referenced
    # (handover.HandOver keeps each one until torch has copied it).
    @pipeline_def(batch_size=spec.batch_size, num_threads=spec.num_threads,
                  device_id=spec.device_id, seed=spec.seed, prefetch_queue_depth=spec.prefetch,
                  exec_dynamic=True)
    def graph():
        jpegs, labels = fn.readers.file(file_root=str(spec.file_root),
                                        file_list=str(spec.file_list), random_shuffle=False,
                                        pad_last_batch=spec.pad_last_batch, name="reader")
        decoder = "mixed" if gpu else "cpu"
        if spec.augment:
            # Decodes only the random window (ROI decoding), then scales it to size x size.
            images = fn.decoders.image_random_crop(
                jpegs, device=decoder, output_type=types.RGB, random_area=list(CROP_SCALE),
                random_aspect_ratio=list(CROP_RATIO), num_attempts=CROP_ATTEMPTS)
            images = fn.resize(images, resize_x=size, resize_y=size,
                               interp_type=types.INTERP_LINEAR, antialias=True)
            mirror = fn.random.coin_flip(probability=0.5)
        else:
            images = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB)
            images = fn.resize(images, resize_shorter=eval_resize(size),
                               interp_type=types.INTERP_LINEAR, antialias=True)
            mirror = 0
        if spec.float_output:
            mean = [255.0 * m for m in spec.mean]
            std = [255.0 * s for s in spec.std]
            dtype = types.FLOAT
        else:
            mean, std, dtype = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], types.UINT8
        # One fused kernel: centre crop (a no-op after the random crop), flip, normalise, layout.
        images = fn.crop_mirror_normalize(
            images, dtype=dtype, output_layout="HWC" if spec.channels_last else "CHW",
            crop=(size, size), crop_pos_x=0.5, crop_pos_y=0.5, mean=mean, std=std,
            mirror=mirror)
        # Labels too go to the device inside DALI: a blocking host-to-device copy of them in
        # torch would wait for the training step queued before it.
        return images, labels.gpu() if gpu else labels

    pipe = graph()
    pipe.build()
    return pipe
