"""An embedder that stays warm: one Estimator, one predict() kept open, fed call after call.

    with Embedder(load_config("configs/demo.yaml")) as emb:
        fc7 = emb.embed(["chelsea_cat.JPG", "https://host/a.jpg", png_bytes, rgb_array, image])
        fc7, failed = emb.embed(items, on_error="nan")    # NaN rows, failed: [Failure, ...]

Opening builds the project's Estimator (build_estimator: model_fn over the towers) and starts
one predict() on a thread of its own (THREAD): the graph is built and the weights restored
once. Its input is a generator of call ids; each call's items are served by the Python stage
(embed_items.ItemReader, fed from a queue that embed() fills as it iterates the items) and
batched as the job batches one part (input.served_part), so a call's rows are the job's. How
a call ends, how failed items are found, one call at a time and Ctrl-C: docs/notebooks.md.
Light at import: TensorFlow is imported when an Embedder opens.
"""
from __future__ import annotations

import atexit
import itertools
import queue
import sys
import threading
import weakref
from collections.abc import Sized
from typing import Callable, Dict, List, NamedTuple, Optional

import numpy as np

from estimator_vgg.embed_items import END, POLL_S, Call, Item, ItemReader, single, why
from estimator_vgg.recipe import FC7_DIM

THREAD = "estimator-vgg-embedder"   # the predict() thread's name
FEED_POLL_S = 0.01  # how long embed() waits for rows before it tops the queue of items up again
PROGRESS_DELAY_S = 2.0  # the default bar appears only for calls that take longer
ON_ERROR = ("raise", "nan")
_OPEN: "weakref.WeakSet[Embedder]" = weakref.WeakSet()


class Failure(NamedTuple):
    """An item that could not be embedded: its position in the call, what it was, and the
    reason and message the errors table would give (docs/reliability.md, "Bad files")."""
    index: int
    item: str
    reason: str
    message: str


class EmbedError(ValueError):
    """An item of an embed() call failed; `.failure` says which and why."""

    def __init__(self, failure: Failure):
        self.failure = failure
        super().__init__(f"item {failure.index} ({failure.item}) cannot be embedded: "
                         f"{failure.reason}: {failure.message} (embed(..., on_error=\"nan\") "
                         f"gives it a NaN row and returns the reasons instead)")


class EmbedderClosed(RuntimeError):
    """The embedder was closed, or its predict() stopped: open a new Embedder(cfg)."""


class _Rows:
    """The call's fc7 matrix, filled by position; grows when the count is not known ahead."""

    def __init__(self, total: Optional[int]):
        self.a = np.empty((64 if total is None else total, FC7_DIM), np.float32)

    def _room(self, j: int) -> None:
        if j >= len(self.a):
            grown = np.empty((max(2 * len(self.a), j + 1), FC7_DIM), np.float32)
            grown[:len(self.a)] = self.a
            self.a = grown

    def put(self, j: int, row) -> None:
        self._room(j)
        self.a[j] = row

    def nan(self, j: int) -> None:
        self._room(j)
        self.a[j] = np.nan

    def matrix(self, n: int) -> np.ndarray:
        return self.a if len(self.a) == n else self.a[:n].copy()


def _shown() -> bool:
    """Whether a bar is seen: in a notebook's kernel, or on a terminal (not a log file)."""
    return "ipykernel" in sys.modules or (sys.stderr is not None and sys.stderr.isatty())


class _Bar:
    """tqdm.auto's bar: a widget in a notebook with ipywidgets, text elsewhere (tqdm's warning
    that ipywidgets is missing is not shown: the text bar is the fallback)."""

    def __init__(self, total: Optional[int], delay: float):
        import warnings

        from tqdm import TqdmWarning
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TqdmWarning)
            from tqdm.auto import tqdm
        self.bar = tqdm(total=total, unit="img", desc="fc7", delay=delay)
        self.shown = 0

    def __call__(self, done: int, total: Optional[int]) -> None:
        self.bar.update(done - self.shown)
        self.shown = done

    def close(self) -> None:
        self.bar.close()


class _Collect:
    """The caller's side of one call: feeds the items as it iterates them, takes the rows in
    order, and settles every item fed as a row or a failure."""

    def __init__(self, emb: "Embedder", call: Call, total: Optional[int], on_error: str,
                 progress: Optional[Callable[[int, Optional[int]], None]]):
        self.emb, self.call, self.total = emb, call, total
        self.on_error, self.progress = on_error, progress
        self.rows = _Rows(total)
        self.failures: List[Failure] = []
        self.done = 0

    def run(self, items) -> None:
        it, call, feeding = iter(items), self.call, True
        while True:
            while feeding and not call.feed.full():  # only this thread puts: never blocks
                obj = next(it, END)
                if obj is END:
                    feeding = False
                    call.feed.put(END)
                    break
                item = call.pending[call.fed] = Item(call.fed, obj)
                call.fed += 1
                call.feed.put(item)
            try:
                msg = self.emb._results.get(timeout=FEED_POLL_S if feeding else POLL_S)
            except queue.Empty:
                self.emb._check_open()
                continue
            if self.take(msg):
                return

    def take(self, msg) -> bool:
        """One message of the predict() thread; True at the end of this call."""
        kind, call = msg[0], self.call
        if kind == "stopped":
            self.emb._check_open()
            raise EmbedderClosed("the embedder's predict() stopped") from msg[1]
        if kind == "end":
            if msg[1] != call.id:
                return False       # the end of a call given up earlier
            self.emb._check_open()
            if call.broken is not None:
                raise RuntimeError(f"estimator-vgg's Python stage failed during this call: "
                                   f"{call.broken!r}") from call.broken
            self.settle(call.fed)  # whatever did not come failed
            self.report()
            return True
        for key, row in zip(msg[1], msg[2]):
            cid, j = (int(v) for v in key.split(b":"))
            if cid != call.id:
                continue           # a row of a call given up earlier
            self.settle(j)
            call.pending.pop(j)
            self.rows.put(j, row)
            self.done += 1
        self.report()
        return False

    def settle(self, upto: int) -> None:
        """The items before position `upto` still pending failed: rows come in order."""
        call = self.call
        for j in [j for j in call.pending if j < upto]:
            item = call.pending.pop(j)
            reason, message = call.errors.pop(call.key(j), None) or why(self.emb.cfg.input, self.emb.cfg.preprocess, item)
            failure = Failure(j, item.name(self.emb.cfg.input.dir), reason, message)
            if self.on_error == "raise":
                raise EmbedError(failure)
            self.failures.append(failure)
            self.rows.nan(j)
            self.done += 1

    def report(self) -> None:
        if self.progress is not None:
            self.progress(self.done, self.total)


class Embedder:
    """fc7 of images given call after call, by the project's Estimator, warm between calls.

    Embedder(cfg) builds the Estimator of `cfg` (its devices, weights, precision and
    preprocessing; output.* is not used) and starts one predict() kept open until close()
    (or the end of a `with` block). Each embed() call then costs only its images.
    """

    def __init__(self, cfg, prepared=None):
        """cfg: a Config (load_config); prepared: weights.PreparedWeights, when converted."""
        self.cfg = cfg
        self.batch = cfg.devices.batch_size * cfg.towers   # images per step, as the job's
        self._calls: queue.Queue = queue.Queue()     # call ids for the pipeline; None stops it
        self._results: queue.Queue = queue.Queue()   # ("rows", keys, fc7), ("end", call id),
        # ("stopped", error or None), from the predict() thread (and the pipeline's generator)
        self._live: Dict[int, Call] = {}
        self._current: Optional[Call] = None       # the call being served; others are given up
        self._ids = itertools.count(1)
        self._turn = threading.Lock()               # one call at a time
        self._owner: Optional[int] = None           # the thread in a call
        self._closed = False
        self._ready = threading.Event()
        self._session = None                        # the predict() session (tests look)
        self._error: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None
        _OPEN.add(self)
        try:
            self._start(prepared)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "Embedder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Embedder {self.cfg.towers} towers, {self.batch} images a step, {state}>"

    @property
    def closed(self) -> bool:
        return self._closed

    def embed(self, items, *, on_error: str = "raise", progress=None):
        """fc7 of `items`: float32 [n, 4096], one row per item, in order.

        items: an iterable (a list, or a generator, pulled as the work goes: a long one
        streams) of paths (relative to input.dir, or absolute) and URIs, as the job reads
        them; bytes of an image file; uint8 [h, w, 3] RGB arrays; PIL images (any mode,
        converted to RGB; EXIF orientation as preprocess.exif_orientation says). One item
        alone gives one row. Cut into batches of devices.batch_size x towers in order, the
        last one shorter, as the job cuts one part: rows equal the job's to the bit.
        on_error: "raise" (EmbedError naming the first item that failed and its reason);
        "nan": its row is NaN and the call returns (fc7, [Failure, ...]).
        progress: None, a tqdm.auto bar for calls longer than PROGRESS_DELAY_S, in a notebook
        or on a terminal; True, always; False, none; or progress(done, total) after every
        batch (total None for a generator).
        """
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error={on_error!r}: choose one of {', '.join(ON_ERROR)}")
        items = [items] if single(items) else items
        total = len(items) if isinstance(items, Sized) else None
        self._enter()
        bar = None
        try:
            if progress is True or (progress is None and _shown()):
                progress = bar = _Bar(total, 0.0 if progress else PROGRESS_DELAY_S)
            collect = self._call(items, total, on_error, progress or None)
        finally:
            self._leave()
            if bar is not None:
                bar.close()
        fc7 = collect.rows.matrix(collect.call.fed)
        return (fc7, collect.failures) if on_error == "nan" else fc7

    def close(self, timeout: float = 60.0) -> None:
        """Stop the predict() thread, which closes its session; later calls raise
        EmbedderClosed. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._current = None
        self._calls.put(None)
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
            if t.is_alive():
                raise RuntimeError(f"the embedder's thread {THREAD} did not stop within "
                                   f"{timeout:.0f} s")
        _OPEN.discard(self)

    # ------------------------------------------------------------------ the caller's side

    def _call(self, items, total, on_error, progress) -> _Collect:
        call = Call(next(self._ids), room=self.batch)
        collect = _Collect(self, call, total, on_error, progress)
        self._live[call.id] = call
        try:
            self._current = call
            self._calls.put(call.id)
            collect.run(items)
        finally:   # ended, or given up (Ctrl-C, an error): the pipeline drops what is left
            self._current = None
            self._live.pop(call.id, None)
        return collect

    def _enter(self) -> None:
        if self._owner == threading.get_ident():
            raise RuntimeError("Embedder.embed() was called from inside one of its own calls "
                               "(its progress callback or its items): one call at a time; "
                               "call it again once this one has returned")
        while not self._turn.acquire(timeout=POLL_S):  # a call from another thread: wait
            self._check_open()
        self._owner = threading.get_ident()
        try:
            self._check_open()
        except BaseException:
            self._leave()
            raise

    def _leave(self) -> None:
        self._owner = None
        self._turn.release()

    def _check_open(self) -> None:
        if self._closed:
            raise EmbedderClosed("this Embedder is closed: open a new one, Embedder(cfg)")
        if self._thread is not None and not self._thread.is_alive():
            raise EmbedderClosed(f"this Embedder's predict() stopped ({self._error!r}): close "
                                 f"it and open a new one, Embedder(cfg)") from self._error

    # ------------------------------------------------------------------ the predict() side

    def _start(self, prepared) -> None:
        from estimator_vgg import weights
        from estimator_vgg.estimator import build_estimator

        prepared = prepared or weights.prepare(self.cfg.model)
        est = build_estimator(self.cfg, prepared)
        self._thread = threading.Thread(target=self._predict, name=THREAD, daemon=True,
                                        args=(est, prepared.checkpoint))
        self._thread.start()
        while not self._ready.wait(POLL_S):
            if not self._thread.is_alive():
                raise EmbedderClosed(f"the embedder's predict() did not start: "
                                     f"{self._error!r}") from self._error

    def _predict(self, est, checkpoint: str) -> None:
        """The thread: one predict() over every call, until close()."""
        error = None
        try:
            for batch in est.predict(self._input_fn, yield_single_examples=False,
                                     checkpoint_path=checkpoint, hooks=[self._hook()]):
                self._results.put(("rows", batch["path"], batch["fc7"]))
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            error = self._error = e
        finally:
            self._results.put(("stopped", error))

    def _hook(self):
        import tensorflow as tf

        emb = self

        class _Ready(tf.compat.v1.train.SessionRunHook):
            def after_create_session(self, session, coord):
                emb._session = session
                emb._ready.set()

        return _Ready()

    def _input_fn(self):
        """The calls, one after the other: a generator of call ids, flat-mapped to each call's
        batches. flat_map asks for the next id only once the consumer, predict(), has taken
        the last batch of a call (no prefetch after it), so ("end", id) comes after its rows."""
        import tensorflow as tf

        from estimator_vgg.input import dataset_options, served_part

        def calls():
            last = None
            while True:
                if last is not None:
                    self._results.put(("end", last))
                last = self._calls.get()
                if last is None:
                    return
                yield last

        def one_call(cid):
            def current(c):
                return np.bool_(self._current is not None and self._current.id == int(c))

            ds = served_part(self.cfg, self._serve, (cid,))
            ds = ds.prefetch(self.cfg.input.prefetch_batches)
            # the batches of a call given up never reach the model
            return ds.filter(lambda batch: tf.reshape(
                tf.numpy_function(current, [cid], tf.bool, stateful=True), []))

        options = dataset_options(self.cfg.input.decode_threads)
        options.experimental_optimization.inject_prefetch = False
        ds = tf.data.Dataset.from_generator(calls, output_signature=tf.TensorSpec([], tf.int64))
        return ds.flat_map(one_call).with_options(options)

    def _serve(self, cid):
        """The items of call `cid` as the Python stage serves them (runs in tf.data)."""
        call = self._live.get(int(cid))
        if call is None or call is not self._current:
            return
        reader = ItemReader(self.cfg.input, self.cfg.preprocess.exif_orientation, call,
                            lambda: self._current)
        try:
            yield from reader.take(sys.maxsize)
        except Exception as e:  # noqa: BLE001 - else it would read as the items failing
            call.broken = e
        finally:
            reader.close()


@atexit.register
def _close_all() -> None:
    for emb in list(_OPEN):
        try:
            emb.close(timeout=10.0)
        except Exception:  # noqa: BLE001 - exiting anyway
            pass
