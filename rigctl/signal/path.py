"""The online signal path: band-pass filter, artifact blanking, matched-filter spike detection.

One `SignalPath` per recording segment; the loop hands it contiguous int16 chunks of any size and
gets back the spikes whose samples are final. Every decision is made per sample on an absolute
sample grid (filter state, blanking intervals, noise blocks, peak windows), so the output does not
depend on how time is cut into chunks. See docs/signal.md for the design and the figures.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from pydantic import ValidationError, model_validator

from rigctl.config import ConfigModel, Problem, first_problem, refusal, spec
from rigctl.errors import SignalConfigError
from rigctl.signal import _kernels as K
from rigctl.signal.template import spike_template
from rigctl.types import Chunk, SpikeEvents
from rigctl.yamlcheck import show

STATE_VERSION = 1
# Two conditions for the parallel kernel (measured by bench/bench_scaling.py on the 2-core machine; docs/signal.md,
# "Scaling"): at least PARALLEL_MIN_CHANNELS channels (below, two threads lost at 1-ms chunks: waking the other
# thread costs more than half the chunk's work), and a chunk of at least this many channel-samples, which depends
# on what a launch costs in numba's threading layer: ~10-60 us with OpenMP or TBB, ~350 us with workqueue
# (its threads sleep, and waking them on this VM is slow).
PARALLEL_MIN_CHANNELS = 2048
PARALLEL_MIN_WORK = {"omp": 2048 * 20, "tbb": 2048 * 20, "workqueue": 6144 * 100}  # channel-samples per chunk
CHANNEL_ALIGN = 16  # block edges on 16-channel multiples: two threads never share a cache line of the float32 rows
_EMPTY = SpikeEvents.empty()  # returned for chunks without spikes (never mutated)
_INT16 = np.dtype(np.int16)


class SignalConfig(ConfigModel):
    """Parameters of the signal path (times in ms, frequencies in Hz), declared with their ranges and
    validated once at construction (a bad value raises SignalConfigError); `validate` adds the checks that
    need the sample rate.

    The filter is a causal Butterworth band-pass (`high_hz` <= 0: high-pass only; its upper edge is
    capped at 0.45 x the sample rate, so the defaults work at any rate above ~1.5 kHz). Detection runs on
    a matched filter: the filtered spike template over [-mf_pre_ms, +mf_post_ms] around its trough,
    scaled so that its output estimates the trough amplitude in uV; a spike is a local maximum of
    that estimate above `threshold_sd` times its noise SD, at least `refractory_ms` after the last.
    A pulse blanks every channel from its onset to `blank_post_ms` after its end (the filter holds,
    then restarts settled on the first clean sample); a channel that saturated meanwhile stays blank
    `blank_saturated_ms` longer, since its amplifier recovers slowly. No spike is reported from
    `blank_pre_ms` before the onset to the end of the channel's blank.
    """

    low_hz: float = spec(300.0, gt=0)
    high_hz: float = spec(6000.0, about="Hz above low_hz, or <= 0 for high-pass only")
    filter_order: int = spec(2, ge=1)
    threshold_sd: float = spec(5.0, gt=0)
    refractory_ms: float = spec(1.0, ge=0)
    blank_pre_ms: float = spec(0.1, ge=0)
    blank_post_ms: float = spec(1.0, ge=0)
    blank_saturated_ms: float = spec(1.5, ge=0)  # extra blank for channels that hit the rails during a pulse's blank
    saturation_fraction: float = spec(0.98, gt=0, le=1)  # |raw| >= this fraction of int16 full scale: saturated
    restart_mean_ms: float = spec(0.1, gt=0)  # time constant of the running mean the filter restarts on after a blank
    mf_pre_ms: float = spec(0.4, ge=0)
    mf_post_ms: float = spec(0.4, ge=0)
    peak_window_ms: float = spec(0.12, ge=0)
    noise_block_ms: float = spec(100.0, gt=0)
    noise_smoothing: float = spec(0.25, gt=0, le=1)  # weight of a new block in the running noise estimate
    noise_clip_sd: float = spec(3.0, gt=0.5)  # winsorise |x| at this many SDs of the previous estimate

    def __init__(self, **values: float) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SignalConfigError(_config_line(first_problem(SignalConfig, exc))) from None

    @model_validator(mode="after")
    def _look_ahead(self) -> "SignalConfig":
        if self.blank_pre_ms > self.mf_post_ms:
            # detections up to blank_pre before a pulse are only still pending if the look-ahead covers it
            raise refusal(f"at most mf_post_ms ({self.mf_post_ms}), the detector's look-ahead",
                          field="blank_pre_ms", value=self.blank_pre_ms)
        return self

    def validate(self, sample_rate_hz: float) -> None:
        """The checks that need the sample rate (the filter's edges below Nyquist)."""
        nyq = sample_rate_hz / 2
        if not 0 < self.low_hz < nyq:
            raise SignalConfigError(f"signal.low_hz={self.low_hz}; allowed: > 0 and < {nyq} (Nyquist)")
        if self.high_hz > 0 and not self.low_hz < min(self.high_hz, 0.9 * nyq):
            raise SignalConfigError(f"signal.high_hz={self.high_hz}; allowed: above low_hz ({self.low_hz}) or <= 0")

    def to_dict(self) -> dict:
        return self.model_dump()


def _config_line(p: Problem) -> str:
    """A refused signal parameter as one line: `signal.threshold_sd=-1; allowed: > 0`."""
    if p.kind in ("unknown", "key"):
        name = p.shown_key or "(a name that is not an identifier, not shown)"
        return f"unknown signal parameter {name}; allowed: {', '.join(p.fields)}"
    if p.kind == "type":
        allowed = {"int": "an integer", "float": "a number"}.get(p.expected, f"a {p.expected}")
    else:
        allowed = f"a finite number {p.allowed}" if p.kind == "finite" else p.allowed
    return f"signal.{p.field}={show(p.raw)}; allowed: {allowed}"


def _winsor_factor(clip_sd: float) -> float:
    """E[min(|z|, c)] for a standard normal z: converts a winsorised mean |x| into an SD."""
    c = clip_sd
    phi_tail = 0.5 * math.erfc(c / math.sqrt(2.0))
    return math.sqrt(2.0 / math.pi) * (1.0 - math.exp(-c * c / 2.0)) + 2.0 * c * phi_tail


def default_threads() -> int:
    """Threads the signal path may use: numba's pool size (NUMBA_NUM_THREADS if set, else all cores)."""
    import numba
    return int(numba.config.NUMBA_NUM_THREADS)


def channel_blocks(n_channels: int, n_blocks: int, align: int = CHANNEL_ALIGN) -> np.ndarray:
    """Edges [0, .., n_channels] of at most `n_blocks` contiguous, near-equal channel blocks cut on `align`
    multiples (so two threads never write one cache line); fewer blocks when there are too few channels."""
    units = -(-n_channels // align)
    n_blocks = max(1, min(n_blocks, units))
    edges = [min(n_channels, (units * b // n_blocks) * align) for b in range(n_blocks)] + [n_channels]
    return np.array(edges, np.int64)


class SignalPath:
    """Filter, blank, detect, chunk by chunk. Not thread-safe; one instance per recording segment.

    `threads` (default: `default_threads()`) splits the channels into that many blocks processed in parallel
    (numba `prange`, any threading layer) when there are at least `parallel_min_channels` and a chunk holds at
    least `parallel_min_work` channel-samples (None: PARALLEL_MIN_WORK of the threading layer); the output
    and the state are bit-identical to one thread's, so the kernel may change from chunk to chunk and a state
    moves between thread counts. The parallel
    kernel holds the GIL like the serial one, so two paths in two Python threads never launch it at once
    (the workqueue layer does not allow that).
    """

    def __init__(self, n_channels: int, sample_rate_hz: float, uV_per_bit: float,
                 config: SignalConfig = SignalConfig(), threads: int | None = None,
                 parallel_min_channels: int = PARALLEL_MIN_CHANNELS, parallel_min_work: int | None = None):
        config.validate(sample_rate_hz)
        if threads is not None and threads < 1:
            raise ValueError(f"threads={threads}; allowed: >= 1 (or None: all of numba's threads)")
        self.n_channels = int(n_channels)
        self.sample_rate_hz = float(sample_rate_hz)
        self.uV_per_bit = float(uV_per_bit)
        self.config = config
        from scipy.signal import butter, sosfilt, sosfilt_zi  # here: an events rig imports the template, not scipy

        fs = self.sample_rate_hz
        ms = fs / 1000.0
        if config.high_hz > 0:
            band = (config.low_hz, min(config.high_hz, 0.45 * fs))
            sos = butter(config.filter_order, band, "bandpass", fs=fs, output="sos")
        else:
            sos = butter(config.filter_order, config.low_hz, "highpass", fs=fs, output="sos")
        self._sos = np.ascontiguousarray(sos, np.float32)  # [n_sections, 6]
        self._zi_unit = np.ascontiguousarray(sosfilt_zi(sos), np.float32)  # [n_sections, 2], unit-step steady state
        # matched filter: filtered template around its trough, normalised so output = trough amplitude
        template, trough = spike_template(fs)
        filtered = sosfilt(sos, np.concatenate([template.astype(np.float64), np.zeros(len(template))]))
        self._pre = int(round(config.mf_pre_ms * ms))
        self._post = int(round(config.mf_post_ms * ms))
        lo = trough - self._pre
        if lo < 0:
            raise SignalConfigError(f"signal.mf_pre_ms={config.mf_pre_ms}; allowed: within the spike template "
                                    "(it reaches before the template's start)")
        w = filtered[lo:trough + self._post + 1]
        w = w / float(w @ w)  # template trough is -1: a spike of trough -A (A > 0) gives +A
        self._w = np.ascontiguousarray(w, np.float32)
        self._taps = len(w)
        self._peak = int(round(config.peak_window_ms * ms))
        self._refractory = int(round(config.refractory_ms * ms))
        self._blank_pre = int(round(config.blank_pre_ms * ms))
        self._blank_post = int(round(config.blank_post_ms * ms))
        self._extend = int(round(config.blank_saturated_ms * ms))
        self._block = max(1, int(round(config.noise_block_ms * ms)))
        self._winsor = _winsor_factor(config.noise_clip_sd)
        self._iparams = np.zeros(7, np.int64)
        self._iparams[[K.P_PRE, K.P_POST, K.P_PEAK, K.P_REFRACTORY, K.P_BLOCK, K.P_EXTEND, K.P_SATURATION]] = (
            self._pre, self._post, self._peak, self._refractory, self._block, self._extend,
            int(config.saturation_fraction * 32767))
        self._fparams = np.zeros(6, np.float64)
        level_alpha = 1.0 - math.exp(-1.0 / max(1e-9, config.restart_mean_ms * ms))
        self._fparams[[K.F_THRESHOLD, K.F_CLIP, K.F_WINSOR, K.F_ALPHA, K.F_SCALE, K.F_LEVEL_ALPHA]] = (
            config.threshold_sd, config.noise_clip_sd, self._winsor, config.noise_smoothing, self.uV_per_bit,
            level_alpha)
        # matched-filter scratch: pieces of ~8 KiB keep the output rows in L1 while all taps pass over them
        self._ys = np.zeros((max(2, 2048 // max(1, self.n_channels)), self.n_channels), np.float32)
        self._blk_s = np.empty(0, np.int64)  # the parallel kernel's per-block spikes, before the merge
        self._blk_c = np.empty(0, np.int32)
        self._blk_a = np.empty(0, np.float32)
        self._spike_buf_len = 0
        wanted = default_threads() if threads is None else min(int(threads), default_threads())
        if self.n_channels < parallel_min_channels:
            wanted = 1
        blocks = channel_blocks(self.n_channels, wanted, CHANNEL_ALIGN)
        self._bounds = blocks if len(blocks) > 2 else None  # None: the serial kernel only
        self.threads = len(blocks) - 1  # threads this path's kernel uses on large enough chunks
        self._widest_block = int(np.diff(blocks).max())
        self._min_work = 0  # channel-samples from which a chunk goes to the parallel kernel (set after warm-up)
        self._reset_state()
        self._warm_up()
        if self._bounds is not None:
            import numba
            layer = numba.threading_layer()  # known once a parallel kernel ran (the warm-up)
            by_layer = PARALLEL_MIN_WORK.get(layer, max(PARALLEL_MIN_WORK.values()))
            self._min_work = by_layer if parallel_min_work is None else int(parallel_min_work)

    def _warm_up(self) -> None:
        """Run the kernel once on throwaway copies of the state, so that loading the compiled code
        (tens of ms, once per process) happens here and not inside the first chunk of a run."""
        c = self.n_channels
        raw = np.zeros((1, c), np.int16)
        work = np.zeros((self._taps, c), np.float32)
        self._kernel(raw, 0, self._taps - 1, self._istate.copy(), self._pulses.copy(), self._z.copy(), work,
                     self._ys.copy(), self._chi.copy(), self._chf.copy(), self._chb.copy(), self._sd.copy(),
                     np.empty(c + 1, np.int64), np.empty(c + 1, np.int32), np.empty(c + 1, np.float32))

    def threads_for(self, n_samples: int) -> int:
        """Threads a chunk of `n_samples` runs on: 1 below the channel or the work threshold."""
        if self._bounds is None or n_samples * self.n_channels < self._min_work:
            return 1
        return self.threads

    def _kernel(self, raw: np.ndarray, first: int, h: int, istate: np.ndarray, pulses: np.ndarray, z: np.ndarray,
                work: np.ndarray, ys: np.ndarray, chi: np.ndarray, chf: np.ndarray, chb: np.ndarray, sd: np.ndarray,
                out_s: np.ndarray, out_c: np.ndarray, out_a: np.ndarray) -> int:
        """One chunk through the serial kernel, or the parallel one (per-block spike buffers sized here)."""
        if self.threads_for(len(raw)) == 1:
            return K.process_chunk(raw, first, h, self._sos, self._zi_unit, self._w, self._fparams, istate, pulses, z,
                                   work, ys, chi, chf, chb, sd, out_s, out_c, out_a)
        n_blocks = self.threads
        widest = self._widest_block
        cap = len(raw) * widest // max(1, self._refractory) + widest + 1
        if len(self._blk_s) < n_blocks * cap:
            size = n_blocks * max(cap, 2 * (len(self._blk_s) // n_blocks))
            self._blk_s = np.empty(size, np.int64)
            self._blk_c = np.empty(size, np.int32)
            self._blk_a = np.empty(size, np.float32)
        return K.process_chunk_parallel(raw, first, h, self._sos, self._zi_unit, self._w, self._fparams, istate, pulses,
                                        z, work, ys, chi, chf, chb, sd, self._bounds, self._blk_s, self._blk_c,
                                        self._blk_a, out_s, out_c, out_a)

    # ---- state -----------------------------------------------------------------------------------------
    def _reset_state(self) -> None:
        c = self.n_channels
        n_sec = self._sos.shape[0]
        self._z = np.zeros((n_sec, 2, c), np.float32)
        # rows 0..taps-2: the filtered samples before `_raw_end` (matched-filter history); the rest is scratch
        self._work = np.zeros((self._taps - 1 + 64, c), np.float32)
        self._raw_end = None  # one past the last raw sample processed (None: nothing yet)
        never = np.iinfo(np.int64).min // 2
        # packed state (see rigctl.signal._kernels.process_chunk): few arrays make the call from Python cheap
        self._istate = np.zeros(K.N_IPARAMS + K.N_FLAGS, np.int64)
        self._istate[:K.N_IPARAMS] = self._iparams
        self._flags = self._istate[K.N_IPARAMS:]  # view
        self._flags[K.S_RESTART] = 1  # the first sample settles the filter
        self._flags[K.S_EXT_UNTIL] = never
        self._chi = np.zeros((K.R_I_ROWS, c), np.int64)  # saturation-blank end, peak sample, refractory end
        self._chi[K.R_EXT_UNTIL] = never
        self._chi[K.R_REFR_UNTIL] = never
        self._chf = np.zeros((K.R_F_ROWS, c), np.float32)  # restart level, peak value, block sums, clips, threshold
        self._chf[K.R_LIM:K.R_LIM + 3] = np.inf
        self._chb = np.zeros((K.R_B_ROWS, c), np.int8)  # saturated during this blank, peak open
        self._sd = np.zeros((2, c), np.float64)  # noise SD of the band-passed signal, of the matched filter
        self._pulses = np.zeros((0, 3), np.int64)  # [suppress_start, blank_start, blank_end)
        self.late_pulses = 0

    def get_state(self) -> dict:
        """Everything needed to continue exactly where this path stopped (picklable)."""
        return {
            "version": STATE_VERSION,
            "config": self.config.to_dict(),
            "n_channels": self.n_channels, "sample_rate_hz": self.sample_rate_hz, "uV_per_bit": self.uV_per_bit,
            "z": self._z.copy(), "hist": self._work[:self._taps - 1].copy(), "raw_end": self._raw_end,
            "istate": self._istate.copy(), "chi": self._chi.copy(), "chf": self._chf.copy(),
            "chb": self._chb.copy(), "sd": self._sd.copy(),
            "pulses": self._pulses.copy(), "late_pulses": self.late_pulses,
        }

    def set_state(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"signal state version {state.get('version')} != {STATE_VERSION}")
        if (state["n_channels"] != self.n_channels or state["sample_rate_hz"] != self.sample_rate_hz
                or state["config"] != self.config.to_dict()):
            raise ValueError("signal state was saved by a path with another configuration")
        self._z = np.ascontiguousarray(state["z"], np.float32).copy()
        self._work = np.zeros((self._taps - 1 + 64, self.n_channels), np.float32)
        self._work[:self._taps - 1] = state["hist"]
        self._raw_end = state["raw_end"]
        self._istate = np.array(state["istate"], np.int64)
        self._flags = self._istate[K.N_IPARAMS:]
        self._chi = np.array(state["chi"], np.int64)
        self._chf = np.array(state["chf"], np.float32)
        self._chb = np.array(state["chb"], np.int8)
        self._sd = np.array(state["sd"], np.float64)
        self._pulses = np.array(state["pulses"], np.int64).reshape(-1, 3)
        self.late_pulses = int(state["late_pulses"])

    # ---- properties ------------------------------------------------------------------------------------
    @property
    def lookahead_samples(self) -> int:
        """A spike at sample s is reported once sample s + lookahead_samples has been processed."""
        return self._post + self._peak

    @property
    def processed_until(self) -> int:
        """All spikes with sample < this have been returned."""
        if self._raw_end is None:
            return 0
        return self._raw_end - self.lookahead_samples

    @property
    def noise_uV(self) -> np.ndarray:
        """Per-channel SD of the band-passed signal (uV); 0 until the first noise block is complete."""
        return self._sd[0].astype(np.float32)

    @property
    def detector_noise_uV(self) -> np.ndarray:
        """Per-channel SD of the matched-filter amplitude estimate (uV); the threshold is a multiple of it."""
        return self._sd[1].astype(np.float32)

    @property
    def settle_samples(self) -> int:
        """Samples after the segment's first before detection starts (the first noise block)."""
        return self._block

    # ---- pulses ----------------------------------------------------------------------------------------
    def expect_pulse(self, sample: int, electrodes: Sequence[int], duration_us: float) -> None:
        """Blank every channel around a pulse at `sample` (the artifact reaches every electrode).

        Must be called before the chunk containing `sample` is processed; a later call still blanks
        what is left and is counted in `late_pulses`.
        """
        dur = int(math.ceil(duration_us * 1e-6 * self.sample_rate_hz))
        sample = int(sample)
        row = np.array([[sample - self._blank_pre, sample, sample + dur + self._blank_post]], np.int64)
        if self._raw_end is not None and sample < self._raw_end:
            self.late_pulses += 1
        self._pulses = np.concatenate([self._pulses, row])
        self._pulses = self._pulses[np.argsort(self._pulses[:, 0], kind="stable")]

    # ---- processing ------------------------------------------------------------------------------------
    def process(self, chunk: Chunk) -> SpikeEvents:
        raw = chunk.samples
        n = raw.shape[0]
        if raw.ndim != 2 or raw.shape[1] != self.n_channels:
            raise ValueError(f"chunk has shape {raw.shape}, expected [n, {self.n_channels}]")
        first = int(chunk.first_sample)
        if self._raw_end is None:
            self._raw_end = first
            self._flags[K.S_BLOCK_POS] = first % self._block  # the noise-block grid is absolute
        elif first != self._raw_end:
            raise ValueError(f"chunk starts at {first}, expected {self._raw_end} (chunks must be contiguous)")
        if n == 0:
            return _EMPTY
        if raw.dtype is not _INT16 or not raw.flags.c_contiguous:
            raw = np.ascontiguousarray(raw, np.int16)
        h = self._taps - 1
        if self._work.shape[0] < h + n:
            grown = np.zeros((h + n, self.n_channels), np.float32)
            grown[:h] = self._work[:h]
            self._work = grown
        work = self._work
        max_spikes = n * self.n_channels // max(1, self._refractory) + self.n_channels + 1
        if self._spike_buf_len < max_spikes:
            self._spike_buf_len = max(max_spikes, 2 * self._spike_buf_len)
            self._out_s = np.empty(self._spike_buf_len, np.int64)
            self._out_c = np.empty(self._spike_buf_len, np.int32)
            self._out_a = np.empty(self._spike_buf_len, np.float32)
        k = self._kernel(raw, first, h, self._istate, self._pulses, self._z, work, self._ys, self._chi, self._chf,
                         self._chb, self._sd, self._out_s, self._out_c, self._out_a)
        self._raw_end = first + n
        # forget pulses whose suppression (and the matched filter's reach past them) is over
        if len(self._pulses):
            keep = self._pulses[:, 2] + self._extend + self._pre + self._taps > self.processed_until
            if not keep.all():
                self._pulses = self._pulses[keep]
        if k == 0:
            return _EMPTY
        return SpikeEvents(self._out_s[:k].copy(), self._out_c[:k].copy(), self._out_a[:k].copy())
