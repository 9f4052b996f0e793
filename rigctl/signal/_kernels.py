"""numba kernel of the signal path. Layout: time-major [n_samples, n_channels] float32, so every inner
loop runs over contiguous channels and vectorises; all state lives in arrays owned by `SignalPath`.

Everything is decided row by row on absolute sample indices (blanking, noise blocks, peak windows),
which is what makes the output independent of how the stream is cut into chunks.
"""

from __future__ import annotations

import numpy as np
from numba import njit

NEG_INF = np.float32(-np.inf)
# no reassociation and no finite-math assumptions: every row is computed the same way, whatever the chunking
FAST = {"contract", "arcp", "nsz", "afn"}

# integer parameters (iparams)
P_PRE, P_POST, P_PEAK, P_REFRACTORY, P_BLOCK, P_EXTEND, P_SATURATION = range(7)
# float parameters (fparams)
F_THRESHOLD, F_CLIP, F_WINSOR, F_ALPHA, F_SCALE = range(5)
# flags (int64 state)
S_RESTART, S_BLOCKS, S_EXT_UNTIL, S_COUNT_X, S_COUNT_Y, S_OPEN = range(6)
N_FLAGS = 6


@njit(cache=True)
def _update_sd(sd, acc_row, count, block, winsor, alpha):
    gauss = np.sqrt(2.0 / np.pi)
    if count < block / 2:
        return
    for c in range(sd.shape[0]):
        f = winsor if sd[c] > 0 else gauss
        est = acc_row[c] / count / f
        sd[c] = est if sd[c] <= 0 else (1.0 - alpha) * sd[c] + alpha * est


@njit(cache=True)
def _end_block(flags, sd_x, sd_y, acc, lim, block, thr_sd, clip_sd, winsor, alpha):
    """Close a noise block: update the SDs, the clips and the thresholds; start a new block."""
    _update_sd(sd_x, acc[0], flags[S_COUNT_X], block, winsor, alpha)
    _update_sd(sd_y, acc[1], flags[S_COUNT_Y], block, winsor, alpha)
    for c in range(sd_x.shape[0]):
        lim[0, c] = clip_sd * sd_x[c] if sd_x[c] > 0 else np.inf
        lim[1, c] = clip_sd * sd_y[c] if sd_y[c] > 0 else np.inf
        lim[2, c] = thr_sd * sd_y[c] if sd_y[c] > 0 else np.inf
        acc[0, c] = 0.0
        acc[1, c] = 0.0
    flags[S_COUNT_X] = 0
    flags[S_COUNT_Y] = 0
    flags[S_BLOCKS] += 1


@njit(cache=True, inline="always")
def _in_intervals(t, pulses, col0, col1, lo_pad, hi_pad):
    for k in range(pulses.shape[0]):
        if pulses[k, col0] - lo_pad <= t < pulses[k, col1] + hi_pad:
            return True
    return False


@njit(cache=True, fastmath=FAST)
def process_rows(raw, first, sos, zi_unit, w, iparams, fparams, pulses, flags, z, work, h, y, sat_seen,
                 ext_until, sd_x, sd_y, acc, lim, is_open, best, best_s, refr_until, out_s, out_c, out_a):
    """Filter, blank, matched-filter and detect `raw` [n, C] (int16) starting at sample `first`.

    `work` rows 0..h-1 hold the filtered samples before `first`; row h+i receives sample first+i.
    `pulses` rows are [suppress_start, blank_start, blank_end). `acc` [2, C] float32 sums of clipped
    |x| and |y| over the current noise block, `lim` [3, C] float32: clip for |x|, clip for |y|,
    detection threshold (inf while there is no estimate). Returns the number of spikes written to
    out_s/out_c/out_a (sorted by sample, then channel).
    """
    n, c_n = raw.shape
    n_sec = sos.shape[0]
    taps = w.shape[0]
    pre = iparams[P_PRE]
    post = iparams[P_POST]
    peak = iparams[P_PEAK]
    refractory = iparams[P_REFRACTORY]
    block = iparams[P_BLOCK]
    extend = iparams[P_EXTEND]
    sat_level = iparams[P_SATURATION]
    thr_sd = fparams[F_THRESHOLD]
    clip_sd = fparams[F_CLIP]
    winsor = fparams[F_WINSOR]
    alpha = fparams[F_ALPHA]
    scale = np.float32(fparams[F_SCALE])
    k_out = 0
    for i in range(n):
        t = first + i
        row = work[h + i]
        # ---- filter with blanking -------------------------------------------------------------------
        if _in_intervals(t, pulses, 1, 2, 0, 0):
            for c in range(c_n):
                row[c] = 0.0
                if abs(np.int32(raw[i, c])) >= sat_level:
                    sat_seen[c] = 1
            flags[S_RESTART] = 1
        else:
            for c in range(c_n):
                row[c] = raw[i, c] * scale
            if flags[S_RESTART] == 1:
                # first clean sample: restart settled on it; channels that saturated stay blank longer
                for s in range(n_sec):
                    for c in range(c_n):
                        z[s, 0, c] = zi_unit[s, 0] * row[c]
                        z[s, 1, c] = zi_unit[s, 1] * row[c]
                if extend > 0:
                    for c in range(c_n):
                        if sat_seen[c] == 1:
                            ext_until[c] = t + extend
                            flags[S_EXT_UNTIL] = max(flags[S_EXT_UNTIL], t + extend)
                for c in range(c_n):
                    sat_seen[c] = 0
                flags[S_RESTART] = 0
            ext_active = t <= flags[S_EXT_UNTIL]
            if ext_active:
                for c in range(c_n):
                    if ext_until[c] == t:
                        for s in range(n_sec):
                            z[s, 0, c] = zi_unit[s, 0] * row[c]
                            z[s, 1, c] = zi_unit[s, 1] * row[c]
            for s in range(n_sec):
                b0 = sos[s, 0]
                b1 = sos[s, 1]
                b2 = sos[s, 2]
                a1 = sos[s, 4]
                a2 = sos[s, 5]
                z0 = z[s, 0]
                z1 = z[s, 1]
                for c in range(c_n):
                    x = row[c]
                    v = b0 * x + z0[c]
                    z0[c] = b1 * x - a1 * v + z1[c]
                    z1[c] = b2 * x - a2 * v
                    row[c] = v
            if ext_active:
                for c in range(c_n):
                    if ext_until[c] > t:
                        row[c] = 0.0
        # ---- matched filter: output for trough sample s uses samples s-pre .. s+post ---------------
        s_t = t - post
        for c in range(c_n):
            y[c] = 0.0
        for j in range(taps):
            wj = w[j]
            src = work[h + i - taps + 1 + j]
            for c in range(c_n):
                y[c] += wj * src[c]
        # ---- noise statistics, away from blanks (and windows that reach into them) ------------------
        if not _in_intervals(t, pulses, 0, 2, 0, extend + taps + pre):
            lx = lim[0]
            ax = acc[0]
            for c in range(c_n):
                ax[c] += min(abs(row[c]), lx[c])
            flags[S_COUNT_X] += 1
        if not _in_intervals(s_t, pulses, 0, 2, post, extend + pre):
            ly = lim[1]
            ay = acc[1]
            for c in range(c_n):
                ay[c] += min(abs(y[c]), ly[c])
            flags[S_COUNT_Y] += 1
        # ---- peaks: a local maximum above threshold, final `peak` samples later -------------------
        thr = lim[2]
        hit = 0
        for c in range(c_n):
            hit |= y[c] > thr[c]
        if hit or flags[S_OPEN] > 0:
            suppressed = _in_intervals(s_t, pulses, 0, 2, 0, 0)
            for c in range(c_n):
                v = y[c]
                if suppressed or s_t < ext_until[c]:
                    v = NEG_INF
                if is_open[c] == 0:
                    if v > thr[c] and s_t >= refr_until[c]:
                        is_open[c] = 1
                        flags[S_OPEN] += 1
                        best[c] = v
                        best_s[c] = s_t
                elif v > best[c]:
                    best[c] = v
                    best_s[c] = s_t
                if is_open[c] == 1 and s_t - best_s[c] >= peak:
                    out_s[k_out] = best_s[c]
                    out_c[k_out] = c
                    out_a[k_out] = -best[c]
                    k_out += 1
                    is_open[c] = 0
                    flags[S_OPEN] -= 1
                    refr_until[c] = best_s[c] + refractory
        # ---- noise blocks on the absolute grid --------------------------------------------------------
        if (t + 1) % block == 0:
            _end_block(flags, sd_x, sd_y, acc, lim, block, thr_sd, clip_sd, winsor, alpha)
    return k_out
