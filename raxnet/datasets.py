"""Keras datasets over the memory-mapped slice stacks of stage 03 (used by stages 05 and 07).

:class:`SliceDataset` serves fixed batches (validation); :class:`BalancedSliceDataset` serves the balanced,
per-epoch redrawn training batches planned by :func:`raxnet.batches.epoch_plan`. Kept apart from
:mod:`raxnet.batches` because defining a ``keras.utils.PyDataset`` subclass imports TensorFlow.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any, Sequence

import keras
import numpy as np

from raxnet.augment import AugmentDraw, AugmentParams, apply_channels, draw
from raxnet.batches import epoch_plan
from raxnet.errors import StageInputError
from raxnet.planes import channels_for, check_plane, context_indices, pad_slices


class SliceDataset(keras.utils.PyDataset):
    """Deterministic batches (fixed order, no augmentation) over a list of ``(stack, slice)`` items.

    Stacks are memory-mapped on first use in each worker process; at most ``max_open`` are kept open
    (least recently used are closed), so resident memory is bounded whatever the number of subjects.
    ``context`` > 0 serves 2.5D inputs: each slice with ``context`` neighbours on either side of its stack
    as channels (:func:`raxnet.planes.context_indices`); the mask is the centre slice's.
    """

    def __init__(self, image_paths: Sequence[str], mask_paths: Sequence[str], item_stack: np.ndarray,
                 item_slice: np.ndarray, target_shape: tuple[int, int], batch_size: int, *,
                 context: int = 0, max_open: int = 32, workers: int = 1, use_multiprocessing: bool = False,
                 max_queue_size: int = 10) -> None:
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)
        if len(image_paths) != len(mask_paths):
            raise ValueError("image_paths and mask_paths differ in length")
        self.image_paths = [str(p) for p in image_paths]
        self.mask_paths = [str(p) for p in mask_paths]
        self.item_stack = np.asarray(item_stack, dtype=np.int64)
        self.item_slice = np.asarray(item_slice, dtype=np.int64)
        self.target_shape = tuple(int(s) for s in target_shape)
        self.batch_size = int(batch_size)
        self.context = int(context)
        self.channels = channels_for(self.context)
        self.max_open = max(1, int(max_open))
        self._reset_cache()

    # Memory maps and locks do not cross process boundaries: each worker opens its own.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("_cache", "_lock", "_pid"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset_cache()

    def _reset_cache(self) -> None:
        self._cache: OrderedDict[int, tuple[np.memmap, np.memmap]] = OrderedDict()
        self._lock = threading.Lock()
        self._pid = os.getpid()

    @property
    def open_stacks(self) -> int:
        """Number of memory-mapped stacks currently open in this process."""
        return len(self._cache) if self._pid == os.getpid() else 0

    def _stack(self, sid: int) -> tuple[np.memmap, np.memmap]:
        if self._pid != os.getpid():  # forked worker: drop the parent's maps
            self._reset_cache()
        with self._lock:
            pair = self._cache.get(sid)
            if pair is not None:
                self._cache.move_to_end(sid)
                return pair
            pair = (np.load(self.image_paths[sid], mmap_mode="r"), np.load(self.mask_paths[sid], mmap_mode="r"))
            self._cache[sid] = pair
            while len(self._cache) > self.max_open:
                self._cache.popitem(last=False)  # unmapping drops its pages from this process
            return pair

    def read_items(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Padded float32 images ``(n, C, H, W)`` (C = ``2 * context + 1`` slices, centre in the middle) and
        masks ``(n, H, W)`` of the given item indices, not augmented."""
        items = np.asarray(items, dtype=np.int64)
        imgs, msks = [], []
        for it in items:
            img, msk = self._stack(int(self.item_stack[it]))
            s = int(self.item_slice[it])
            imgs.append(np.asarray(img[context_indices(img.shape[0], s, self.context)[0]], dtype=np.float32))
            msks.append(np.asarray(msk[s], dtype=np.float32))
        if not imgs:
            return (np.zeros((0, self.channels, *self.target_shape), np.float32),
                    np.zeros((0, *self.target_shape), np.float32))
        return pad_slices(np.stack(imgs), self.target_shape), pad_slices(np.stack(msks), self.target_shape)

    def inputs(self, items: np.ndarray) -> np.ndarray:
        """Network inputs ``(n, H, W, C)`` of the given item indices, not augmented."""
        return channels_last(self.read_items(items)[0])

    def __len__(self) -> int:
        return -(-self.item_stack.size // self.batch_size)

    def batch_items(self, index: int) -> np.ndarray:
        """Item indices of batch ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range (0..{len(self) - 1})")
        return np.arange(index * self.batch_size, min((index + 1) * self.batch_size, self.item_stack.size))

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.read_items(self.batch_items(index))
        return channels_last(x), y[..., None]


class BalancedSliceDataset(SliceDataset):
    """Training batches: half lesion / half normal, per-batch lesion-area-bin proportions of the training
    set, redrawn each epoch from ``SeedSequence([seed, epoch])``; optional seeded augmentation.

    Items ``0..L-1`` are the lesion slices (bin of each in ``lesion_bins``), ``L..`` the normal slices.
    ``model.fit`` calls :meth:`on_epoch_begin` / :meth:`on_epoch_end`; an end that follows a begin moves
    to the next epoch's draw. Custom loops call both hooks per epoch, or :meth:`set_epoch` (also to resume).
    """

    def __init__(self, image_paths: Sequence[str], mask_paths: Sequence[str], item_stack: np.ndarray,
                 item_slice: np.ndarray, lesion_bins: np.ndarray, bin_labels: Sequence[str],
                 target_shape: tuple[int, int], batch_size: int, *, n_lesion: int, steps: int, seed: int,
                 plane: str, augment: AugmentParams | None = None, lesion_weights: np.ndarray | None = None,
                 **kwargs: Any) -> None:
        super().__init__(image_paths, mask_paths, item_stack, item_slice, target_shape, batch_size, **kwargs)
        self.lesion_bins = np.asarray(lesion_bins, dtype=np.int64)
        self.lesion_weights = None if lesion_weights is None else np.asarray(lesion_weights, dtype=float)
        self.bin_labels = list(bin_labels)
        self.n_lesion_items = self.lesion_bins.size
        self.n_normal_items = self.item_stack.size - self.n_lesion_items
        if self.n_lesion_items == 0 or self.n_normal_items == 0:
            raise StageInputError("training set needs both lesion and normal slices "
                                  f"({self.n_lesion_items} lesion, {self.n_normal_items} normal)")
        self.n_lesion = int(n_lesion)
        self.steps = int(steps)
        self.seed = int(seed)
        self.plane = check_plane(plane)
        self.augment = augment
        self.epoch = 0
        self._in_epoch = False
        self._plan_cache: tuple[int, np.ndarray] | None = None

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_plan_cache"] = None
        return state

    def __len__(self) -> int:
        return self.steps

    def plan(self, epoch: int | None = None) -> np.ndarray:
        """Item indices ``(steps, batch_size)`` of ``epoch`` (default: the current epoch)."""
        epoch = self.epoch if epoch is None else int(epoch)
        cached = self._plan_cache
        if cached is not None and cached[0] == epoch:
            return cached[1]
        plan = epoch_plan(self.lesion_bins, len(self.bin_labels), self.n_normal_items, self.batch_size,
                          self.n_lesion, self.steps, self.seed, epoch, self.lesion_weights)
        self._plan_cache = (epoch, plan)
        return plan

    def set_epoch(self, epoch: int) -> None:
        """Serve epoch ``epoch``'s draw next (e.g. when resuming training)."""
        self.epoch = int(epoch)
        self._in_epoch = False

    def on_epoch_begin(self) -> None:
        self._in_epoch = True

    def on_epoch_end(self) -> None:
        # Keras also calls on_epoch_end when it resets its iterator at the start of fit(); only an end
        # that follows a begin moves to the next draw, so fit's epoch e is served SeedSequence([seed, e]).
        # Advancing here (not in on_epoch_begin) matters: Keras' workers may request the next epoch's
        # first batches between on_epoch_end and on_epoch_begin.
        if self._in_epoch:
            self.epoch += 1
        self._in_epoch = False

    def batch_items(self, index: int, epoch: int | None = None) -> np.ndarray:
        if not 0 <= index < self.steps:
            raise IndexError(f"batch {index} out of range (0..{self.steps - 1})")
        return self.plan(epoch)[index]

    def batch_draws(self, index: int, epoch: int | None = None) -> list[AugmentDraw]:
        """The augmentation drawn for each slice of batch ``index`` of ``epoch`` (default: the current
        one), from ``SeedSequence([seed, epoch, index])`` alone; [] without augmentation."""
        if self.augment is None:
            return []
        epoch = self.epoch if epoch is None else int(epoch)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, int(index)]))
        return [draw(rng, self.plane, self.augment) for _ in range(self.batch_size)]

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.batch(index, self.epoch)

    def batch(self, index: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``index`` of epoch ``epoch`` (augmented), whatever the current epoch."""
        draws = self.batch_draws(index, epoch)
        x, y = self.read_items(self.batch_items(index, epoch))
        for k, d in enumerate(draws):
            x[k], y[k] = apply_channels(x[k], y[k], d, self.plane)
        return channels_last(x), y[..., None]


def channels_last(x: np.ndarray) -> np.ndarray:
    """``(n, C, H, W)`` slices with their context channels -> the network's ``(n, H, W, C)``."""
    return np.ascontiguousarray(np.moveaxis(x, 1, -1))


def as_tf_data(ds: Any, first_epoch: int = 0, epochs: int = 1, parallel: int = 1) -> Any:
    """``ds``'s batches as a ``tf.data.Dataset`` of index-addressed ``tf.numpy_function`` calls.

    Why not hand the PyDataset to ``fit``: Keras feeds it through ``tf.data.Dataset.from_generator``, and on
    a 2-core VM that made every train step 2-3x slower than the same step fed from arrays (1.7-2.3 s vs
    0.66-0.76 s, raxnet width 16, 2 mm axial batches of 16; index-addressed calls: 0.73 s). A
    :class:`BalancedSliceDataset` yields epochs ``first_epoch .. epochs - 1`` back to back, each batch
    addressed by ``(epoch, index)`` -- fit with ``steps_per_epoch = len(ds)``; read-ahead across an epoch
    boundary serves the next epoch's own batches, so a resumed run still sees what an uninterrupted one
    does. Any other dataset yields its batches once, in order (validation). ``parallel`` > 1 computes that
    many batches at once (threads; the order stays deterministic).
    """
    import tensorflow as tf

    x0, y0 = ds[0]
    shapes = ((None, *x0.shape[1:]), (None, *y0.shape[1:]))
    if isinstance(ds, BalancedSliceDataset):
        steps = len(ds)
        indices = tf.data.Dataset.range(int(first_epoch) * steps, int(epochs) * steps)

        def load(k: Any) -> tuple[np.ndarray, np.ndarray]:
            epoch, index = divmod(int(k), steps)
            return ds.batch(index, epoch)
    else:
        indices = tf.data.Dataset.range(len(ds))

        def load(k: Any) -> tuple[np.ndarray, np.ndarray]:
            x, y = ds[int(k)]
            return np.asarray(x, np.float32), np.asarray(y, np.float32)

    def fetch(k: Any) -> tuple[Any, Any]:
        x, y = tf.numpy_function(load, [k], (tf.float32, tf.float32), stateful=False)
        return tf.ensure_shape(x, shapes[0]), tf.ensure_shape(y, shapes[1])

    if int(parallel) > 1:
        return indices.map(fetch, num_parallel_calls=int(parallel), deterministic=True).prefetch(2)
    return indices.map(fetch).prefetch(2)
