"""numba kernels of the signal path. Layout: time-major [n_samples, n_channels] float32, so every inner
loop runs over contiguous channels and vectorises; all state lives in arrays owned by `SignalPath`.

Everything is decided row by row on absolute sample indices (blanking, noise blocks, peak windows),
which is what makes the output independent of how the stream is cut into chunks.

Speed notes: the inner loops live in small non-inlined helpers that take whole arrays plus indices.
LLVM vectorises those; it does not vectorise loops over views made inside a loop, and every such view
also costs reference-count updates.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

NEG_INF = np.float32(-np.inf)
# No fast-math at all: without FMA contraction or reassociation, a vectorised loop and a scalar one give
# bit-identical results, so the output cannot depend on which path (hence which chunking) a row took.
FAST = False

# integer parameters (iparams)
P_PRE, P_POST, P_PEAK, P_REFRACTORY, P_BLOCK, P_EXTEND, P_SATURATION = range(7)
# float parameters (fparams)
F_THRESHOLD, F_CLIP, F_WINSOR, F_ALPHA, F_SCALE, F_LEVEL_ALPHA = range(6)
# flags (int64 state)
S_RESTART, S_BLOCKS, S_EXT_UNTIL, S_COUNT_X, S_COUNT_Y, S_OPEN, S_BLOCK_POS = range(7)
N_FLAGS = 7
N_IPARAMS = 7
# rows of the packed per-channel state
R_EXT_UNTIL, R_BEST_S, R_REFR_UNTIL = range(3)  # chi, int64
R_I_ROWS = 3
R_LEVEL, R_BEST, R_ACC, R_LIM = 0, 1, 2, 4  # chf, float32: R_ACC.. 2 rows, R_LIM.. 3 rows
R_F_ROWS = 7
R_SAT_SEEN, R_OPEN = range(2)  # chb, int8
R_B_ROWS = 2


# ---- vector helpers --------------------------------------------------------------------------------------
@njit(cache=True, fastmath=FAST, inline="never")
def _convert(raw, i, work, r, scale, c0, c1):
    for c in range(c0, c1):
        work[r, c] = np.float32(raw[i, c]) * scale


@njit(cache=True, fastmath=FAST, inline="never")
def _copy_row(work, src, dst, c0, c1):
    for c in range(c0, c1):
        work[dst, c] = work[src, c]


@njit(cache=True, fastmath=FAST, inline="never")
def _biquad(work, r, z, s, b0, b1, b2, a1, a2, c0, c1):
    for c in range(c0, c1):
        x = work[r, c]
        v = b0 * x + z[s, 0, c]
        z[s, 0, c] = b1 * x - a1 * v + z[s, 1, c]
        z[s, 1, c] = b2 * x - a2 * v
        work[r, c] = v


@njit(cache=True, fastmath=FAST, inline="never")
def _matched_filter_flat(wf, base, w, yf, yoff, m, c_n):
    """yf[yoff + k] = sum_j w[j] * wf[base + j*c_n + k] for k < m (flat rows: vectorises across rows too).

    Four taps per pass over yf: a quarter of the loads and stores of yf. The order of additions is
    the same for every element, so the result does not depend on where a piece starts.
    """
    taps = w.shape[0]
    w0 = w[0]
    for k in range(m):
        yf[np.uint64(yoff + k)] = w0 * wf[np.uint64(base + k)]
    j = 1
    while j + 3 < taps:
        w1 = w[j]
        w2 = w[j + 1]
        w3 = w[j + 2]
        w4 = w[j + 3]
        o1 = base + j * c_n
        o2 = o1 + c_n
        o3 = o2 + c_n
        o4 = o3 + c_n
        for k in range(m):
            y = np.uint64(yoff + k)
            yf[y] = (yf[y] + w1 * wf[np.uint64(o1 + k)] + w2 * wf[np.uint64(o2 + k)]
                     + w3 * wf[np.uint64(o3 + k)] + w4 * wf[np.uint64(o4 + k)])
        j += 4
    while j < taps:
        wj = w[j]
        off = base + j * c_n
        for k in range(m):
            yf[np.uint64(yoff + k)] += wj * wf[np.uint64(off + k)]
        j += 1


@njit(cache=True, fastmath=FAST, inline="never")
def _add_clipped_abs(acc, a, vals, r, lim, b, c0, c1):
    for c in range(c0, c1):
        acc[a, c] += min(abs(vals[r, c]), lim[b, c])


@njit(cache=True, fastmath=FAST, inline="never")
def _add_clipped_abs_rows(acc, a, vals, r0, r1, lim, b, c0, c1):
    for r in range(r0, r1):
        for c in range(c0, c1):
            acc[a, c] += min(abs(vals[r, c]), lim[b, c])


@njit(cache=True, fastmath=FAST, inline="never")
def _rows_above(vals, m, lim, b, hits, c0, c1):
    """hits[r] = 1 if any vals[r, c] > lim[b, c] (c0 <= c < c1), for r < m."""
    for r in range(m):
        hit = 0
        for c in range(c0, c1):
            hit |= vals[r, c] > lim[b, c]
        hits[r] = hit


@njit(cache=True, inline="never")
def _filter_run(raw, i0, i1, work, h, z, sos, scale, c0, c1):
    """Plain band-pass of rows i0..i1-1 (no blank, no restart): int16 -> float32, then every biquad."""
    for i in range(i0, i1):
        r = h + i
        _convert(raw, i, work, r, scale, c0, c1)
        for s in range(sos.shape[0]):
            _biquad(work, r, z, s, sos[s, 0], sos[s, 1], sos[s, 2], sos[s, 4], sos[s, 5], c0, c1)


@njit(cache=True, inline="always")
def _in_intervals(t, pulses, col0, col1, lo_pad, hi_pad):
    for k in range(pulses.shape[0]):
        if pulses[k, col0] - lo_pad <= t < pulses[k, col1] + hi_pad:
            return True
    return False


@njit(cache=True)
def _restart_channel(z, zi_unit, c, value):
    for s in range(z.shape[0]):
        z[s, 0, c] = zi_unit[s, 0] * value
        z[s, 1, c] = zi_unit[s, 1] * value


# ---- noise blocks ------------------------------------------------------------------------------------------
@njit(cache=True)
def _update_sd(sd, acc, a, count, block, winsor, alpha, c0, c1):
    gauss = np.sqrt(2.0 / np.pi)
    if count < block / 2:
        return
    for c in range(c0, c1):
        f = winsor if sd[c] > 0 else gauss
        est = acc[a, c] / count / f
        sd[c] = est if sd[c] <= 0 else (1.0 - alpha) * sd[c] + alpha * est


@njit(cache=True)
def _end_block(flags, sd_x, sd_y, chf, block, thr_sd, clip_sd, winsor, alpha, c0, c1):
    """Close a noise block of channels c0..c1-1: update the SDs, the clips and the thresholds; start a new block."""
    _update_sd(sd_x, chf, R_ACC, flags[S_COUNT_X], block, winsor, alpha, c0, c1)
    _update_sd(sd_y, chf, R_ACC + 1, flags[S_COUNT_Y], block, winsor, alpha, c0, c1)
    for c in range(c0, c1):
        chf[R_LIM, c] = clip_sd * sd_x[c] if sd_x[c] > 0 else np.inf
        chf[R_LIM + 1, c] = clip_sd * sd_y[c] if sd_y[c] > 0 else np.inf
        chf[R_LIM + 2, c] = thr_sd * sd_y[c] if sd_y[c] > 0 else np.inf
        chf[R_ACC, c] = 0.0
        chf[R_ACC + 1, c] = 0.0
    flags[S_COUNT_X] = 0
    flags[S_COUNT_Y] = 0
    flags[S_BLOCKS] += 1


# ---- the chunk -----------------------------------------------------------------------------------------------
@njit(cache=True)
def process_chunk(raw, first, h, sos, zi_unit, w, fparams, istate, pulses, z, work, ys, chi, chf, chb, sd, out_s,
                  out_c, out_a):
    """Filter, blank, matched-filter and detect `raw` [n, C] (int16) starting at sample `first`, on one thread.

    `work` rows 0..h-1 hold the filtered samples before `first`; row h+i receives sample first+i; on
    return rows 0..h-1 hold the last h filtered samples (the history for the next chunk).
    `ys` [rows, C] is scratch for the matched filter's output; the chunk is processed in pieces of at
    most `rows` rows, cut at every blank end so that a restart only happens on a piece's first row.
    `pulses` rows are [suppress_start, blank_start, blank_end). State is packed to keep the call from
    Python cheap: `istate` = iparams + flags; per channel `chi` int64 [R_I_ROWS, C], `chf` float32
    [R_F_ROWS, C] (restart level, best peak value, block sums of clipped |x| and |y|, clip for |x|,
    clip for |y|, threshold; inf while there is no estimate), `chb` int8 (saturated, peak open), `sd`
    float64 (noise SD of x and of y). Returns the number of spikes written to out_s/out_c/out_a
    (sorted by sample, then channel).
    """
    return _process_channels(raw, first, h, sos, zi_unit, w, fparams, istate[:N_IPARAMS], istate[N_IPARAMS:], pulses,
                             z, work, ys, chi, chf, chb, sd, 0, raw.shape[1], out_s, out_c, out_a, 0)


@njit(cache=True, parallel=True)
def process_chunk_parallel(raw, first, h, sos, zi_unit, w, fparams, istate, pulses, z, work, ys, chi, chf, chb, sd,
                           bounds, blk_s, blk_c, blk_a, out_s, out_c, out_a):
    """`process_chunk` with the channels cut into blocks [bounds[b], bounds[b+1]), one per thread.

    Every channel's arithmetic is the same sequence as on one thread (a block holds whole channels), so the
    bits are too. The shared flags are functions of the sample index and the pulses (restart, noise-block
    position and counts), identical in every block, except two that are cross-channel and are combined in
    a fixed order afterwards: the latest saturation-blank end (max) and the number of open peaks (sum).
    Block b writes its spikes to blk_* from b * (len(blk_s) // n_blocks); they are merged by (sample,
    channel): at equal samples the lower block, hence the lower channel, first - the one-thread order.
    """
    n_blocks = bounds.shape[0] - 1
    iparams = istate[:N_IPARAMS]
    flags = istate[N_IPARAMS:]
    cap = blk_s.shape[0] // n_blocks
    bflags = np.empty((n_blocks, N_FLAGS), np.int64)
    for b in range(n_blocks):
        bflags[b, :] = flags
        n_open = 0
        for c in range(bounds[b], bounds[b + 1]):
            n_open += chb[R_OPEN, c]
        bflags[b, S_OPEN] = n_open
    ends = np.empty(n_blocks, np.int64)
    for b in prange(n_blocks):
        ends[b] = _process_channels(raw, first, h, sos, zi_unit, w, fparams, iparams, bflags[b], pulses, z, work, ys,
                                    chi, chf, chb, sd, bounds[b], bounds[b + 1], blk_s, blk_c, blk_a, b * cap)
    flags[:] = bflags[0]
    for b in range(1, n_blocks):
        flags[S_EXT_UNTIL] = max(flags[S_EXT_UNTIL], bflags[b, S_EXT_UNTIL])
        flags[S_OPEN] += bflags[b, S_OPEN]
    # merge the blocks' sorted runs
    pos = np.arange(n_blocks) * cap
    k_out = 0
    while True:
        pick = -1
        for b in range(n_blocks):
            if pos[b] < ends[b] and (pick < 0 or blk_s[pos[b]] < blk_s[pos[pick]]):
                pick = b
        if pick < 0:
            return k_out
        j = pos[pick]
        out_s[k_out] = blk_s[j]
        out_c[k_out] = blk_c[j]
        out_a[k_out] = blk_a[j]
        k_out += 1
        pos[pick] = j + 1


@njit(cache=True)
def _process_channels(raw, first, h, sos, zi_unit, w, fparams, iparams, flags, pulses, z, work, ys, chi, chf, chb, sd,
                      c0, c1, out_s, out_c, out_a, k_out):
    """The chunk for channels c0..c1-1 of the shared arrays, with `flags` of its own; returns the end of
    its spikes in out_* (written from k_out on).

    The channel loops run over unsigned indices (u0..u1): with a signed start that is not a constant 0,
    numba's negative-index wrap-around stays in every access and the loops do not vectorise (4x slower).
    """
    u0 = np.uint64(c0)
    u1 = np.uint64(c1)
    ext_until = chi[R_EXT_UNTIL]
    best_s = chi[R_BEST_S]
    refr_until = chi[R_REFR_UNTIL]
    level = chf[R_LEVEL]
    best = chf[R_BEST]
    sat_seen = chb[R_SAT_SEEN]
    is_open = chb[R_OPEN]
    sd_x = sd[0]
    sd_y = sd[1]
    n, c_n = raw.shape
    rows = ys.shape[0]
    taps = w.shape[0]
    wf = work.reshape(work.size)
    yf = ys.reshape(ys.size)
    hits = np.empty(rows, np.int8)
    i0 = 0
    while i0 < n:
        i1 = min(n, i0 + rows)
        for k in range(pulses.shape[0]):
            e = pulses[k, 2] - first
            if i0 < e < i1:
                i1 = e
        # a noise block ends on a piece's last row, so thresholds change between pieces only
        to_block_end = iparams[P_BLOCK] - flags[S_BLOCK_POS]
        if i0 + to_block_end < i1:
            i1 = i0 + to_block_end
        _filter_rows(raw, i0, i1, first, sos, zi_unit, iparams, fparams, pulses, flags, z, work, h, sat_seen,
                     ext_until, level, u0, u1)
        if c0 == 0 and c1 == c_n:  # whole rows: one flat pass
            _matched_filter_flat(wf, (h + i0 - taps + 1) * c_n, w, yf, 0, (i1 - i0) * c_n, c_n)
        else:
            for ry in range(i1 - i0):
                _matched_filter_flat(wf, (h + i0 + ry - taps + 1) * c_n + c0, w, yf, ry * c_n + c0, c1 - c0, c_n)
        k_out = _detect_rows(i0, i1, first, taps, iparams, fparams, pulses, flags, work, h, ys, hits, ext_until,
                             sd_x, sd_y, chf, is_open, best, best_s, refr_until, out_s, out_c, out_a, k_out, u0, u1)
        i0 = i1
    # keep the last h filtered rows at the top of `work`: the matched filter's history for the next chunk
    for r in range(h):
        _copy_row(work, n + r, r, u0, u1)
    return k_out


@njit(cache=True)
def _filter_rows(raw, i0, i1, first, sos, zi_unit, iparams, fparams, pulses, flags, z, work, h, sat_seen,
                 ext_until, level, c0, c1):
    """Band-pass rows i0..i1-1 into work, holding through blanks and restarting settled after them."""
    extend = iparams[P_EXTEND]
    sat_level = iparams[P_SATURATION]
    scale = np.float32(fparams[F_SCALE])
    level_alpha = np.float32(fparams[F_LEVEL_ALPHA])
    i = i0
    while i < i1:
        t = first + i
        r = h + i
        if flags[S_RESTART] == 0 and t > flags[S_EXT_UNTIL] and not _in_intervals(t, pulses, 1, 2, 0, 0):
            j = i1  # plain rows up to the next blank
            for k in range(pulses.shape[0]):
                b = pulses[k, 1] - first
                if i < b < j:
                    j = b
            _filter_run(raw, i, j, work, h, z, sos, scale, c0, c1)
            i = j
            continue
        _filter_row_special(raw, i, t, r, pulses, flags, z, zi_unit, sos, work, sat_seen, ext_until, level, extend,
                            sat_level, scale, level_alpha, c0, c1)
        i += 1


@njit(cache=True)
def _filter_row_special(raw, i, t, r, pulses, flags, z, zi_unit, sos, work, sat_seen, ext_until, level, extend,
                        sat_level, scale, level_alpha, c0, c1):
    """One row inside a blank, at a restart, or while some channel's saturation blank lasts.

    `flags[S_EXT_UNTIL]` (the latest saturation-blank end) only decides whether a row takes this path;
    for a channel past its own blank the result is the plain path's, so a block may hold a larger value
    than its own channels need without changing any bit."""
    n_sec = sos.shape[0]
    if _in_intervals(t, pulses, 1, 2, 0, 0):
        # blanked: the filter holds; a short running mean of the raw input (restart level) follows
        if flags[S_RESTART] != 2:
            for c in range(c0, c1):
                level[c] = raw[i, c] * scale
        for c in range(c0, c1):
            x = raw[i, c] * scale
            level[c] += level_alpha * (x - level[c])
            work[r, c] = 0.0
            if abs(np.int32(raw[i, c])) >= sat_level:
                sat_seen[c] = 1
        flags[S_RESTART] = 2
        return
    _convert(raw, i, work, r, scale, c0, c1)
    if flags[S_RESTART] != 0:
        # first clean sample: restart every section in the steady state of a constant input at the
        # restart level (after a blank: the running mean, less noisy than one sample), so no step
        # enters the filter; channels that saturated stay blank `extend` samples longer
        for c in range(c0, c1):
            if flags[S_RESTART] == 2:
                level[c] += level_alpha * (work[r, c] - level[c])
            else:
                level[c] = work[r, c]
            _restart_channel(z, zi_unit, c, level[c])
            if extend > 0 and sat_seen[c] == 1:
                ext_until[c] = t + extend
                flags[S_EXT_UNTIL] = max(flags[S_EXT_UNTIL], t + extend)
            sat_seen[c] = 0
        flags[S_RESTART] = 0
    ext_active = t <= flags[S_EXT_UNTIL]
    if ext_active:
        for c in range(c0, c1):
            if ext_until[c] >= t:
                level[c] += level_alpha * (work[r, c] - level[c])
            if ext_until[c] == t:
                _restart_channel(z, zi_unit, c, level[c])
    for s in range(n_sec):
        _biquad(work, r, z, s, sos[s, 0], sos[s, 1], sos[s, 2], sos[s, 4], sos[s, 5], c0, c1)
    if ext_active:
        for c in range(c0, c1):
            if ext_until[c] > t:
                work[r, c] = 0.0


@njit(cache=True)
def _detect_rows(i0, i1, first, taps, iparams, fparams, pulses, flags, work, h, ys, hits, ext_until, sd_x, sd_y, chf,
                 is_open, best, best_s, refr_until, out_s, out_c, out_a, k_out, c0, c1):
    """Noise statistics, noise blocks and peak picking for rows i0..i1-1 of channels c0..c1-1; returns the new
    end of the spikes. `flags[S_OPEN]` counts the open peaks of these channels (it only lets rows without
    a threshold crossing skip the channel loop)."""
    pre = iparams[P_PRE]
    post = iparams[P_POST]
    peak = iparams[P_PEAK]
    refractory = iparams[P_REFRACTORY]
    block = iparams[P_BLOCK]
    extend = iparams[P_EXTEND]
    thr_sd = fparams[F_THRESHOLD]
    clip_sd = fparams[F_CLIP]
    winsor = fparams[F_WINSOR]
    alpha = fparams[F_ALPHA]
    any_pulses = pulses.shape[0] > 0
    touched = False
    for k in range(pulses.shape[0]):
        if first + i0 - post < pulses[k, 2] + extend + taps + pre and first + i1 > pulses[k, 1] - post:
            touched = True
    if not touched:
        _add_clipped_abs_rows(chf, R_ACC, work, h + i0, h + i1, chf, R_LIM, c0, c1)
        _add_clipped_abs_rows(chf, R_ACC + 1, ys, 0, i1 - i0, chf, R_LIM + 1, c0, c1)
        flags[S_COUNT_X] += i1 - i0
        flags[S_COUNT_Y] += i1 - i0
    _rows_above(ys, i1 - i0, chf, R_LIM + 2, hits, c0, c1)
    for i in range(i0, i1):
        t = first + i
        r = h + i
        ry = i - i0
        s_t = t - post
        # noise statistics, away from blanks (and windows that reach into them); both intervals start at
        # or after the pulse onset in raw time, so a pulse announced just in time is honoured
        if touched:
            if not _in_intervals(t, pulses, 1, 2, 0, extend + taps + pre):
                _add_clipped_abs(chf, R_ACC, work, r, chf, R_LIM, c0, c1)
                flags[S_COUNT_X] += 1
            if not _in_intervals(s_t, pulses, 1, 2, post, extend + pre):
                _add_clipped_abs(chf, R_ACC + 1, ys, ry, chf, R_LIM + 1, c0, c1)
                flags[S_COUNT_Y] += 1
        # peaks: a local maximum above threshold, final `peak` samples later
        if flags[S_OPEN] > 0 or hits[ry]:
            suppressed = any_pulses and _in_intervals(s_t, pulses, 0, 2, 0, 0)
            for c in range(c0, c1):
                v = ys[ry, c]
                if suppressed or s_t < ext_until[c]:
                    v = NEG_INF
                if is_open[c] == 0:
                    if v > chf[R_LIM + 2, c] and s_t >= refr_until[c]:
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
        # noise blocks on the absolute grid (S_BLOCK_POS = (t + 1) % block, kept to avoid a division per row)
        pos = flags[S_BLOCK_POS] + 1
        if pos >= block:
            pos = 0
        flags[S_BLOCK_POS] = pos
        if pos == 0:
            _end_block(flags, sd_x, sd_y, chf, block, thr_sd, clip_sd, winsor, alpha, c0, c1)
    return k_out
