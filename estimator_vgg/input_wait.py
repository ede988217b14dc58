"""How long the model waited for the input pipeline, and what to change when that set the pace.

    wait = InputWait()
    est.predict(..., hooks=[wait.hook()])
    wait.report(decode_threads=2, fast_decode=False)   # a log line, and a hint if input-bound

Measured from the step stats of a sample of steps (every `every`-th, after the first): the
time the Estimator's IteratorGetNext op blocked, over the step's wall time. Light at import
(the hook imports TensorFlow when it is made).
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

INPUT_BOUND_SHARE = 0.15  # above it, the log says the input pipeline set the pace


class InputWait:
    """The share of the model's step time spent waiting for the next batch."""

    def __init__(self, every: int = 10):
        self.every, self.step, self.traced = every, 0, 0
        self.wait_us = self.step_us = 0

    def hook(self):
        """A SessionRunHook that traces every `every`-th step into this meter."""
        import tensorflow as tf

        meter = self

        class _Hook(tf.compat.v1.train.SessionRunHook):
            def before_run(self, run_context):
                meter.step += 1
                if meter.step % meter.every != 2 % meter.every:
                    return None
                return tf.compat.v1.train.SessionRunArgs(None, options=tf.compat.v1.RunOptions(
                    trace_level=tf.compat.v1.RunOptions.SOFTWARE_TRACE))

            def after_run(self, run_context, run_values):
                meter.add(run_values.run_metadata.step_stats)

        return _Hook()

    def add(self, step_stats) -> None:
        starts, ends, wait = [], [], 0
        for dev in step_stats.dev_stats:
            for node in dev.node_stats:
                starts.append(node.all_start_micros)
                ends.append(node.all_start_micros + node.all_end_rel_micros)
                if node.node_name.split(":")[0] == "IteratorGetNext":
                    wait = max(wait, node.all_end_rel_micros)
        if starts:
            self.traced += 1
            self.wait_us += wait
            self.step_us += max(ends) - min(starts)

    @property
    def share(self) -> float:
        return self.wait_us / self.step_us if self.step_us else 0.0

    @property
    def record(self) -> dict:
        """The manifest run record's field, when any step was traced."""
        return {"input_wait_share": round(self.share, 3)} if self.traced else {}

    def report(self, decode_threads: int, fast_decode: bool) -> None:
        """Log the share; above INPUT_BOUND_SHARE, say which setting to change
        (input.decode_threads, preprocess.fast_decode)."""
        if not self.traced:
            return
        log.info("input: the model waited for the input pipeline %.0f%% of its step time "
                 "(%d steps traced)", 100 * self.share, self.traced)
        if self.share > INPUT_BOUND_SHARE:
            tips = [f"raise input.decode_threads (now {decode_threads})"]
            if not fast_decode:
                tips.append("set preprocess.fast_decode: true")
            log.warning("input: the input pipeline, not the devices, set the pace of this run; "
                        "%s (docs/devices.md, \"Decoding\")", " or ".join(tips))
