"""Host-side metric handling: device buffers, JSONL + TensorBoard writers, a progress bar.

Steps return dicts of device scalars. They stay on the device in a ``MetricBuffer`` until a log
step, where one ``jax.device_get`` fetches them all (the only host sync of the training loop).
"""

import json
import math
import os
import sys
import time

import numpy as np
import tqdm

from ressfl_jax import sharding


class MetricBuffer:
    """Collects per-step device metric dicts; ``flush`` averages them on the host."""

    def __init__(self):
        self._items = []
        self._first_step = None

    def append(self, step: int, metrics) -> None:
        if self._first_step is None:
            self._first_step = step
        self._items.append(metrics)

    def __len__(self):
        return len(self._items)

    def flush(self, last_step: int) -> dict[str, float]:
        """Means over the buffered steps; raises FloatingPointError on a non-finite value."""
        if not self._items:
            return {}
        host = sharding.to_host(self._items)
        first = self._first_step
        self._items, self._first_step = [], None
        means = {k: float(np.mean([np.asarray(m[k], np.float64) for m in host])) for k in host[0]}
        # "NAME#weight" marks NAME as a weighted mean (e.g. a loss only defined on some steps):
        # NAME was logged as value * weight, so the weighted mean is mean(NAME) / mean(weight).
        for name in [k for k in means if k.endswith("#weight")]:
            weight = means.pop(name)
            value_name = name[:-len("#weight")]
            value = means.pop(value_name)
            if weight > 0:
                means[value_name] = value / weight
        bad = sorted(k for k, v in means.items() if not math.isfinite(v))
        if bad:
            raise FloatingPointError(
                f"Non-finite training metrics {bad} in steps {first}..{last_step}; the run stops "
                f"here and the last saved checkpoint stays as it was. Lower the learning rate or "
                f"check the data, then resume with --resume.")
        return means


class MetricWriter:
    """Writes scalars to ``WORKDIR/metrics.jsonl`` (one JSON object per log step) and TensorBoard.

    ``enabled=False`` (every process but the first of a multi-process job) writes nothing.
    """

    def __init__(self, workdir: str, *, resume_step: int | None = None, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
        if resume_step is None:
            open(self.jsonl_path, "w").close()
        else:
            self._truncate_after(resume_step)
        from tensorboardX import SummaryWriter  # Lazy: keeps `import ressfl_jax` cheap.
        self._tb = SummaryWriter(logdir=workdir, flush_secs=30)

    def _truncate_after(self, step: int) -> None:
        """Drops records written after ``step`` by a run that is being resumed."""
        if not os.path.exists(self.jsonl_path):
            return
        with open(self.jsonl_path) as f:
            records = [json.loads(line) for line in f if line.strip()]
        tmp = self.jsonl_path + ".tmp"
        with open(tmp, "w") as f:
            for record in records:
                if record["step"] <= step:
                    f.write(json.dumps(record) + "\n")
        os.replace(tmp, self.jsonl_path)

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps({"step": int(step), **scalars}) + "\n")
        for name, value in scalars.items():
            self._tb.add_scalar(name, value, int(step))

    def write_text(self, name: str, text: str) -> None:
        if not self.enabled:
            return
        self._tb.add_text(name, text)

    def write_images(self, step: int, images: dict[str, np.ndarray]) -> None:
        """images: name -> float [H, W, 3] in [0, 1]."""
        if not self.enabled:
            return
        for name, image in images.items():
            self._tb.add_image(name, np.asarray(image), int(step), dataformats="HWC")

    def close(self) -> None:
        if not self.enabled:
            return
        self._tb.close()


class Progress:
    """A terminal progress bar: step, epoch, img/s, loss, ETA."""

    def __init__(self, *, total_steps: int, initial_step: int, images_per_step: int,
                 enabled: bool = True):
        self._bar = tqdm.tqdm(total=total_steps, initial=initial_step, unit="step",
                              dynamic_ncols=True, file=sys.stderr, disable=not enabled,
                              mininterval=1.0 if sys.stderr.isatty() else 30.0)
        self._images_per_step = images_per_step
        self._time = time.perf_counter()
        self.images_per_sec = float("nan")

    def update(self, num_steps: int, *, epoch: int, loss: float) -> float:
        """Advances the bar; returns img/s since the previous update (timed after a host sync)."""
        now = time.perf_counter()
        self.images_per_sec = num_steps * self._images_per_step / max(now - self._time, 1e-9)
        self._time = now
        self._bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}",
                              img_s=f"{self.images_per_sec:.0f}", refresh=False)
        self._bar.update(num_steps)
        return self.images_per_sec

    def reset_timer(self) -> None:
        """Excludes non-training time (eval, checkpoints) from the next img/s figure."""
        self._time = time.perf_counter()

    def write(self, message: str) -> None:
        self._bar.write(message, file=sys.stderr)

    def close(self) -> None:
        self._bar.close()


def image_grid(rows: list[np.ndarray], *, pad: int = 2) -> np.ndarray:
    """Tiles rows of images into one float [H', W', 3] image in [0, 1] (white separators).

    Args:
      rows: each float [N, H, W, 3] (values are clipped to [0, 1]); all the same shape.
    """
    if not rows or any(r.shape != rows[0].shape for r in rows):
        raise ValueError(f"image_grid needs rows of one shape; got {[r.shape for r in rows]}")
    n, h, w, c = rows[0].shape
    grid = np.ones((len(rows) * (h + pad) + pad, n * (w + pad) + pad, c), np.float32)
    for i, row in enumerate(rows):
        for j, image in enumerate(np.clip(np.asarray(row, np.float32), 0.0, 1.0)):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y:y + h, x:x + w] = image
    return grid


def save_png(path: str, image: np.ndarray, *, scale: int = 2) -> None:
    """Writes a float [H, W, 3] image in [0, 1] as a PNG, upscaled ``scale`` x (nearest)."""
    from PIL import Image  # Lazy: only attacks write images.
    pixels = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    pixels = pixels.repeat(scale, axis=0).repeat(scale, axis=1)
    tmp = path + ".tmp.png"
    Image.fromarray(pixels, mode="RGB").save(tmp)
    os.replace(tmp, path)
