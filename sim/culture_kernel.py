"""numba kernels of the simulated culture: counter-based randomness, spontaneous spikes, fine-step dynamics.

Every random number is a pure function of (seed, stream, absolute step, neuron) through a splitmix64 hash,
so the network's spikes cannot depend on how time is split into `Culture.advance()` calls.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# hash streams (any distinct constants)
STREAM_SPONT = 1
STREAM_OFFSET = 2
STREAM_NOISE = 3
STREAM_PULSE = 4
STREAM_LATENCY = 5
STREAM_BURST = 6
STREAM_BURST_SPIKE = 7

# layout of the float64 parameter vector handed to `run_fine` (names -> index)
P_NAMES = (
    "dt_ms", "spp", "v_th", "v_reset", "decay_m_e", "decay_m_i", "decay_se", "decay_si", "decay_a",
    "a_inc", "ref_e", "ref_i", "noise_sd", "decay_pre", "decay_post", "eta_plus", "eta_minus",
    "w_max", "gate_th", "gate_width", "plastic", "w_min", "stp_u", "decay_rec", "decay_sn", "nmda_jump",
    "eta_het",
)
P = {name: i for i, name in enumerate(P_NAMES)}
# the same indices as module constants (numba reads globals of int type as compile-time constants)
I_DT_MS = 0
I_SPP = 1
I_V_TH = 2
I_V_RESET = 3
I_DECAY_M_E = 4
I_DECAY_M_I = 5
I_DECAY_SE = 6
I_DECAY_SI = 7
I_DECAY_A = 8
I_A_INC = 9
I_REF_E = 10
I_REF_I = 11
I_NOISE_SD = 12
I_DECAY_PRE = 13
I_DECAY_POST = 14
I_ETA_PLUS = 15
I_ETA_MINUS = 16
I_W_MAX = 17
I_GATE_TH = 18
I_GATE_WIDTH = 19
I_PLASTIC = 20
I_W_MIN = 21
I_STP_U = 22
I_DECAY_REC = 23
I_DECAY_SN = 24
I_NMDA_JUMP = 25
I_ETA_HET = 26


@njit(cache=True, inline="always")
def _mix(x):
    x = x + np.uint64(0x9E3779B97F4A7C15)
    z = x
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True)
def hash_u01(seed, stream, a, b):
    """Uniform [0, 1) from the integers (seed, stream, a, b); a pure function."""
    h = _mix(np.uint64(seed) * np.uint64(0x100000001B3) + np.uint64(stream))
    h = _mix(h ^ np.uint64(a))
    h = _mix(h ^ (np.uint64(b) * np.uint64(0xD6E8FEB86659FD93)))
    return float(h >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(cache=True)
def hash_u01_array(seed, stream, a, n):
    """hash_u01(seed, stream, a, i) for i in 0..n-1."""
    out = np.empty(n, np.float64)
    for i in range(n):
        out[i] = hash_u01(seed, stream, a, i)
    return out


@njit(cache=True)
def step_start(k, spp):
    """First amplifier sample of fine step k (steps are spp samples long on an absolute grid)."""
    return np.int64(np.floor(k * spp + 1e-9))


@njit(cache=True)
def spike_sample(seed, k, n, spp):
    s0 = step_start(k, spp)
    s1 = step_start(k + 1, spp)
    return s0 + np.int64(hash_u01(seed, STREAM_OFFSET, k, n) * (s1 - s0))


def make_noise_bank(seed: int, length: int = 1_000_003) -> np.ndarray:
    """Unit-variance Gaussian values read by `run_fine` in windows chosen by a hash of the step."""
    return np.random.default_rng([int(seed), 0x0B5E]).standard_normal(length)


@njit(cache=True)
def spike_samples_array(seed, steps, neurons, spp):
    out = np.empty(steps.shape[0], np.int64)
    for i in range(steps.shape[0]):
        out[i] = spike_sample(seed, steps[i], neurons[i], spp)
    return out


@njit(cache=True)
def spont_block(seed, block, steps_per_block, p_step, spp):
    """Spontaneous spikes of block `block` (steps [block*B, (block+1)*B)): Poisson counts per neuron with
    mean p_step[n] * B, spike steps uniform in the block. Returns (step, neuron, sample) sorted by
    (sample, neuron)."""
    n_neurons = p_step.shape[0]
    steps = np.empty(64, np.int64)
    neurons = np.empty(64, np.int32)
    m = 0
    base = block * steps_per_block
    for n in range(n_neurons):
        lam = p_step[n] * steps_per_block
        count = _poisson(hash_u01(seed, STREAM_SPONT, block, 2 * n), lam)
        for j in range(count):
            if m == steps.shape[0]:
                steps = np.concatenate((steps, np.empty(m, np.int64)))
                neurons = np.concatenate((neurons, np.empty(m, np.int32)))
            v = hash_u01(seed, STREAM_SPONT, block, 2 * n + 1 + 2 * n_neurons * (j + 1))
            steps[m] = base + np.int64(v * steps_per_block)
            neurons[m] = n
            m += 1
    # order by (sample, neuron): samples increase with steps, so this is also step order
    samples = np.empty(m, np.int64)
    key = np.empty(m, np.int64)
    for i in range(m):
        samples[i] = spike_sample(seed, steps[i], neurons[i], spp)
        key[i] = samples[i] * n_neurons + neurons[i]
    order = np.argsort(key)
    return steps[:m][order], neurons[:m][order], samples[order]


@njit(cache=True, inline="always")
def _poisson(u, lam):
    """Inverse-CDF Poisson draw for a small mean (capped at 50)."""
    p = np.exp(-lam)
    c = p
    count = 0
    while u > c and count < 50:
        count += 1
        p *= lam / count
        c += p
    return count


@njit(cache=True)
def burst_block(seed, block, steps_per_block, pos_x, pos_y, bursts_per_block, duration_steps, duration_sigma,
                speed_um_per_step, participation, p_step_in_burst):
    """Spikes of spontaneous network bursts that fall in block `block` (bursts start in this block or the one
    before; a burst lasts less than half a block, so none reaches further). Bursts start as a Poisson process;
    each spreads from a random leader neuron at `speed_um_per_step`; a participating neuron fires as a Poisson
    process of p_step_in_burst per step for the burst's duration (lognormal: median duration_steps, sigma
    duration_sigma) from the moment the wave reaches it. Returns (step, neuron), unsorted."""
    n_neurons = pos_x.shape[0]
    steps = np.empty(64, np.int64)
    neurons = np.empty(64, np.int32)
    m = 0
    lo = block * steps_per_block
    hi = lo + steps_per_block
    max_dur = steps_per_block // 2
    for src in range(block - 1, block + 1):
        if src < 0:
            continue
        n_bursts = _poisson(hash_u01(seed, STREAM_BURST, src, 0), bursts_per_block)
        for b in range(n_bursts):
            onset = src * steps_per_block + np.int64(hash_u01(seed, STREAM_BURST, src, 1 + 4 * b) * steps_per_block)
            u1 = max(hash_u01(seed, STREAM_BURST, src, 2 + 4 * b), 1e-12)
            u2 = hash_u01(seed, STREAM_BURST, src, 3 + 4 * b)
            z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
            dur = min(max_dur, max(1, np.int64(duration_steps * np.exp(duration_sigma * z))))
            leader = np.int64(hash_u01(seed, STREAM_BURST, src, 4 + 4 * b) * n_neurons)
            for n in range(n_neurons):
                if hash_u01(seed, STREAM_BURST_SPIKE, onset, 2 * n) >= participation:
                    continue
                d = np.sqrt((pos_x[n] - pos_x[leader]) ** 2 + (pos_y[n] - pos_y[leader]) ** 2)
                start = onset + np.int64(d / speed_um_per_step)
                if start >= hi or start + dur <= lo:
                    continue
                count = _poisson(hash_u01(seed, STREAM_BURST_SPIKE, onset, 2 * n + 1), p_step_in_burst * dur)
                for j in range(count):
                    v = hash_u01(seed, STREAM_BURST_SPIKE, onset, 2 * n_neurons * (j + 1) + 2 * n)
                    k = start + np.int64(v * dur)
                    if k < lo or k >= hi:
                        continue
                    if m == steps.shape[0]:
                        steps = np.concatenate((steps, np.empty(m, np.int64)))
                        neurons = np.concatenate((neurons, np.empty(m, np.int32)))
                    steps[m] = k
                    neurons[m] = n
                    m += 1
    return steps[:m], neurons[:m]


@njit(cache=True)
def decay_state(gap_steps, prm, is_exc, V, IE, II, IN, A, xpre, ypost, ring_e, ring_i, refr, R):
    """Analytic relaxation over `gap_steps` fine steps spent in the coarse regime (no network input).
    Spikes still in flight are dropped (the coarse regime does not propagate spikes)."""
    g = float(gap_steps)
    dme = prm[I_DECAY_M_E] ** g
    dmi = prm[I_DECAY_M_I] ** g
    dse = prm[I_DECAY_SE] ** g
    dsi = prm[I_DECAY_SI] ** g
    da = prm[I_DECAY_A] ** g
    dpre = prm[I_DECAY_PRE] ** g
    dpost = prm[I_DECAY_POST] ** g
    drec = prm[I_DECAY_REC] ** g
    dsn = prm[I_DECAY_SN] ** g
    for n in range(V.shape[0]):
        R[n] = 1.0 - (1.0 - R[n]) * drec
        V[n] *= dme if is_exc[n] else dmi
        IE[n] *= dse
        II[n] *= dsi
        IN[n] *= dsn
        A[n] *= da
        xpre[n] *= dpre
        ypost[n] *= dpost
        refr[n] = 0
    ring_e[:, :] = 0.0
    ring_i[:, :] = 0.0


@njit(cache=True, fastmath=True)
def run_fine(k0, k1, seed, prm, is_exc, V, IE, II, IN, A, xpre, ypost, refr, forced, R, ring_e, ring_i,
             out_ptr, post, delay, w, plastic_syn, in_ptr, in_syn, pre_of, sp_step, sp_neuron, noise_bank,
             out_sample, out_neuron, n_out):
    """Simulate fine steps k0..k1-1 (LIF, exponential synaptic currents, delays, adaptation, gated STDP).

    Units: V in mV above rest, IE/IN/II (AMPA, NMDA, GABA-A) in mV (drive), A in mV. Spikes are written to out_* from n_out on;
    returns (new n_out, out_sample, out_neuron) (arrays grow as needed)."""
    n_neurons = V.shape[0]
    D = ring_e.shape[0]
    spp = prm[I_SPP]
    v_th = prm[I_V_TH]
    v_reset = prm[I_V_RESET]
    dme = prm[I_DECAY_M_E]
    dmi = prm[I_DECAY_M_I]
    dse = prm[I_DECAY_SE]
    dsi = prm[I_DECAY_SI]
    da = prm[I_DECAY_A]
    a_inc = prm[I_A_INC]
    ref_e = np.int64(prm[I_REF_E])
    ref_i = np.int64(prm[I_REF_I])
    noise_sd = prm[I_NOISE_SD]
    dpre = prm[I_DECAY_PRE]
    dpost = prm[I_DECAY_POST]
    eta_p = prm[I_ETA_PLUS]
    eta_m = prm[I_ETA_MINUS]
    w_max = prm[I_W_MAX]
    w_min = prm[I_W_MIN]
    gate_th = prm[I_GATE_TH]
    gate_w = prm[I_GATE_WIDTH]
    plastic = prm[I_PLASTIC] > 0.5
    stp_u = prm[I_STP_U]
    drec = prm[I_DECAY_REC]
    decay_m = np.where(is_exc, dme, dmi)
    dsn = prm[I_DECAY_SN]
    nmda_jump = prm[I_NMDA_JUMP]
    eta_h = prm[I_ETA_HET]
    sp_i = 0
    n_sp = sp_step.shape[0]
    spiked = np.zeros(n_neurons, np.bool_)
    for k in range(k0, k1):
        slot = k % D
        # noise: a window of a fixed bank of unit-sd values, its offset a hash of the step (chunking-free)
        nb = np.int64(hash_u01(seed, STREAM_NOISE, k, 0) * (noise_bank.shape[0] - n_neurons))
        re = ring_e[slot]
        ri = ring_i[slot]
        for n in range(n_neurons):  # branch-free part (vectorisable)
            ie = IE[n] + re[n]
            ii = II[n] + ri[n]
            inm = IN[n] + re[n] * nmda_jump
            drive = ie + inm - ii - A[n]  # exact decay of V towards the instantaneous drive (mV)
            V[n] = drive + (V[n] - drive) * decay_m[n] + noise_sd * noise_bank[nb + n]
            IE[n] = ie * dse
            II[n] = ii * dsi
            IN[n] = inm * dsn
            A[n] *= da
            xpre[n] *= dpre
            ypost[n] *= dpost
            R[n] = 1.0 - (1.0 - R[n]) * drec
            re[n] = 0.0
            ri[n] = 0.0
        for n in range(n_neurons):
            spiked[n] = False
            if refr[n] > 0:
                refr[n] -= 1
                V[n] = v_reset
                if forced[n] == k:
                    forced[n] = -1
            elif V[n] >= v_th or forced[n] == k:
                spiked[n] = True
                if forced[n] == k:
                    forced[n] = -1
        while sp_i < n_sp and sp_step[sp_i] < k:
            sp_i += 1
        while sp_i < n_sp and sp_step[sp_i] == k:
            nn = sp_neuron[sp_i]
            if refr[nn] == 0:
                spiked[nn] = True
            sp_i += 1
        for n in range(n_neurons):
            if not spiked[n]:
                continue
            if n_out == out_sample.shape[0]:
                out_sample = np.concatenate((out_sample, np.empty(n_out, np.int64)))
                out_neuron = np.concatenate((out_neuron, np.empty(n_out, np.int32)))
            out_sample[n_out] = spike_sample(seed, k, n, spp)
            out_neuron[n_out] = n
            n_out += 1
            if plastic and is_exc[n]:
                # NMDA-like gate: potentiation needs net synaptic depolarisation at the spike
                gate = (IE[n] + IN[n] - II[n] - gate_th) / gate_w
                if gate > 1.0:
                    gate = 1.0
                if gate > 0.0:
                    for j in range(in_ptr[n], in_ptr[n + 1]):
                        s = in_syn[j]
                        w[s] += eta_p * gate * xpre[pre_of[s]] * (w_max - w[s])
            V[n] = v_reset
            refr[n] = ref_e if is_exc[n] else ref_i
            if is_exc[n]:
                A[n] += a_inc
            xpre[n] += 1.0
            ypost[n] += 1.0
            exc = is_exc[n]
            rel = R[n]  # short-term depression: release scales with the available resources
            if exc:
                R[n] -= stp_u * R[n]
            for s in range(out_ptr[n], out_ptr[n + 1]):
                q = post[s]
                if plastic and plastic_syn[s]:
                    # spike-timing depression, and heterosynaptic depression of an input that arrives while
                    # its target is not depolarised (its NMDA-like gate closed): inputs that fire when their
                    # target does not lose weight, which synaptic scaling hands to those that fire with it
                    gq = (IE[q] + IN[q] - II[q] - gate_th) / gate_w
                    gq = 0.0 if gq < 0.0 else (1.0 if gq > 1.0 else gq)
                    w[s] -= (eta_m * ypost[q] + eta_h * (1.0 - gq)) * (w[s] - w_min)
                t = (k + delay[s]) % D
                if exc:
                    ring_e[t, q] += w[s] * rel
                else:
                    ring_i[t, q] += w[s]
    return n_out, out_sample, out_neuron


@njit(cache=True)
def normalise_incoming(w, in_ptr, in_syn, target, rate, w_max):
    """Synaptic scaling: move each neuron's summed plastic input weight a fraction `rate` (in log space)
    towards its target, multiplicatively, so potentiation of some inputs depresses the others."""
    for n in range(in_ptr.shape[0] - 1):
        tot = 0.0
        for j in range(in_ptr[n], in_ptr[n + 1]):
            tot += w[in_syn[j]]
        if tot <= 0.0 or target[n] <= 0.0:
            continue
        f = (target[n] / tot) ** rate
        for j in range(in_ptr[n], in_ptr[n + 1]):
            v = w[in_syn[j]] * f
            w[in_syn[j]] = v if v < w_max else w_max
