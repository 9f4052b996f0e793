"""A spiking model of a dissociated cortical culture on a virtual MEA, for the simulated rig.

Leaky integrate-and-fire neurons (80 % excitatory, 20 % inhibitory) scattered over the array, with
distance-dependent connectivity, conduction delays, spike-frequency adaptation, spontaneous firing and
spike-timing-dependent plasticity on excitatory-to-excitatory synapses whose potentiation is gated by
postsynaptic depolarisation (an NMDA-receptor-like coincidence requirement, blocked by APV).

Time: a fine grid of `dt_ms` steps aligned to absolute amplifier samples. After each pulse the network is
integrated step by step for `fine_window_ms` (the evoked response and the plasticity it drives); elsewhere
neurons only fire spontaneously (Poisson, not propagated) and their state relaxes analytically. Which
regime a step is in depends only on the pulses, and every random number is a hash of absolute indices, so
spikes do not depend on how time is split into `advance()` calls.

docs/culture.md describes the model, its parameters and their sources.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Sequence

import numpy as np

from rigctl.layout import ElectrodeLayout
from rigctl.sim import culture_kernel as ck
from rigctl.sim.drugs import drug_effect
from rigctl.types import BiphasicPulse


DRIVE_CACHE_PATTERNS = 64  # pulse patterns whose per-neuron drive is kept (closed loop may send many)


@dataclass(frozen=True)
class CultureConfig:
    """Every parameter of the culture model. Defaults are the tuned model; docs/culture.md gives sources."""

    # -- population and placement
    n_neurons: int = 1000  # feasibility-study scale; ~400 neurons/mm^2 over the array (cultures: 500-3000)
    frac_exc: float = 0.8  # cortical E:I ratio 4:1
    margin_um: float = 150.0  # neurons extend this far beyond the outermost electrodes
    # -- connectivity (exponential fall-off with distance, mean out-degree per neuron)
    lambda_exc_um: float = 200.0  # E axonal reach (cultures: local-dominated, some mm-long axons)
    lambda_inh_um: float = 150.0  # interneurons project locally
    out_degree_exc: float = 60.0  # mean synapses made by an E neuron
    out_degree_inh: float = 80.0  # mean synapses made by an I neuron
    # -- synaptic efficacies, as the peak PSP they cause in a resting target (mV)
    epsp_ee_mV: float = 1.0  # session-1 evoked ~1.6-2 spikes/electrode/trial (released: 0.4-5.4, 0 % mixing 2.6-4.6)
    epsp_ei_mV: float = 1.5
    ipsp_ie_mV: float = 2.0
    ipsp_ii_mV: float = 2.0
    weight_cv: float = 0.3  # lognormal spread of initial weights
    # -- neurons (mV relative to rest; LIF)
    tau_m_exc_ms: float = 20.0  # pyramidal membrane time constant
    tau_m_inh_ms: float = 10.0  # fast-spiking interneurons
    tau_syn_exc_ms: float = 5.0  # AMPA(+ some NMDA) current decay
    tau_syn_inh_ms: float = 8.0  # GABA-A current decay
    tau_nmda_ms: float = 40.0  # slow NMDA-receptor component of excitatory drive (decay)
    nmda_ratio: float = 1.0  # NMDA : AMPA charge ratio of an E synapse (cortex: ~0.5-2 at rest-ish)
    v_th_mV: float = 15.0  # threshold 15 mV above rest (-65 -> -50 mV)
    v_reset_mV: float = 5.0
    refractory_exc_ms: float = 2.0
    refractory_inh_ms: float = 1.0
    adapt_inc_mV: float = 2.0  # spike-frequency adaptation (E only), ends the evoked reverberation
    tau_adapt_ms: float = 300.0
    noise_sd_mV: float = 1.0  # membrane noise per fine step
    stp_u: float = 0.3  # short-term depression of E synapses: fraction of resources used per spike
    tau_rec_ms: float = 500.0  # ...and their recovery time (Tsodyks-Markram; terminates bursts in cultures)
    # -- delays
    delay_min_ms: float = 0.5  # synaptic delay
    conduction_um_per_ms: float = 300.0  # unmyelinated axons in culture: 0.1-0.5 m/s
    # -- spontaneous firing (Poisson; dissociated cortical cultures fire ~0.5-5 Hz per neuron)
    spont_exc_hz: float = 0.9
    spont_inh_hz: float = 1.8
    # -- time discretisation
    dt_ms: float = 0.5  # fine step
    fine_window_ms: float = 32.0  # integrate the network this long after each pulse (window ends at 30)
    spont_block_steps: int = 2000  # spontaneous spikes are drawn per block of fine steps (1 s)
    # -- spontaneous network bursts (docs/culture.md: rate and duration of mature rat cortical cultures)
    burst_rate_per_min: float = 6.0  # burst onsets, a Poisson process
    burst_duration_ms: float = 200.0  # median duration of a neuron's participation (lognormal)
    burst_duration_sigma: float = 0.5  # ...its log-sd; capped at half a spontaneous block
    burst_speed_um_per_ms: float = 100.0  # spread from a random leader neuron (cultures: ~50-200 mm/s)
    burst_participation: float = 0.7  # fraction of neurons that fire in a burst
    burst_rate_hz: float = 50.0  # a participating neuron's firing rate during the burst
    # -- stimulation
    electrode_impedance_kohm: float = 50.0  # voltage pulses: I = V / Z (1 V -> 20 uA)
    act_uA_per_um2: float = 0.005  # current-distance constant k of I_th = I0 + k d^2 (5000 uA/mm^2)
    act_i0_uA: float = 1.0  # threshold current at zero distance
    act_slope: float = 0.15  # logistic width of activation in units of drive ratio
    act_threshold_cv: float = 0.25  # neuron-to-neuron variability of the activation threshold
    chronaxie_us: float = 200.0  # strength-duration: drive scales with (1 + c/200 us) / (1 + c/phase_us)
    latency_min_ms: float = 1.0  # direct activation latency range
    latency_max_ms: float = 3.0
    act_threshold_inh: float = 2.0  # interneurons' activation threshold relative to pyramidal cells'
    local_drive_mV: float = 100.0  # slow excitatory drive a pulse leaves in neurons near its electrode (docs)
    local_drive_cap: float = 2.0  # ...scaled by the neuron's drive ratio I / I_th(d), capped here
    local_inh_share: float = 0.67  # the GABA-A part of that local response, relative to its net drive: a drug
    # that scales GABA-A by g adds (g - 1) x share x the local drive as GABA-A drive (docs/culture.md)
    # -- plasticity (E->E synapses)
    tau_plus_ms: float = 20.0
    tau_minus_ms: float = 20.0
    eta_plus: float = 0.008  # potentiation per pre-post pairing (soft bound to w_max); above eta_minus: co-active inputs grow
    eta_het: float = 0.004  # heterosynaptic depression per presynaptic spike while the target's gate is closed
    eta_minus: float = 0.003  # depression rate per post-pre pairing (soft bound to w_min)
    w_max_factor: float = 2.0  # w_max = factor x mean initial E->E weight
    w_min_factor: float = 0.0
    scaling_rate: float = 1.0  # synaptic scaling after each evoked window: fraction (log space) of the way
    # back to each neuron's initial summed E->E input (1 = exact normalisation; 0 = off)
    gate_th_mV: float = 10.0  # NMDA-like gate: net synaptic drive at the spike above which LTP starts
    gate_width_mV: float = 6.0  # ...and reaches full strength gate_th + width
    # -- drugs (see sim/drugs.py)
    bicuculline_block: float = 0.6
    diazepam_gain: float = 2.4
    diazepam_tau_scale: float = 1.5
    diazepam_tonic_mV: float = 3.0  # tonic GABA-A drive under diazepam (sim/drugs.py)


def _psp_peak_per_unit(tau_m: float, tau_s: float) -> float:
    """Peak of V(t) = tau_s / (tau_s - tau_m) (exp(-t/tau_s) - exp(-t/tau_m)): the LIF response to a unit
    jump of an exponentially decaying drive."""
    if abs(tau_m - tau_s) < 1e-9:
        return math.exp(-1.0)
    t_peak = tau_m * tau_s / (tau_m - tau_s) * math.log(tau_m / tau_s)
    return tau_s / (tau_s - tau_m) * (math.exp(-t_peak / tau_s) - math.exp(-t_peak / tau_m))


class Culture:
    """The network. `advance()` returns neuron spikes; `ElectrodeProjection` turns them into electrode events."""

    def __init__(self, layout: ElectrodeLayout, sample_rate_hz: float, seed: int, drug: str = "none",
                 config: CultureConfig | None = None):
        self.config = cfg = config or CultureConfig()
        self.layout = layout
        self.sample_rate_hz = float(sample_rate_hz)
        self.seed = int(seed)
        self.drug = drug
        self.effect = drug_effect(drug, bicuculline_block=cfg.bicuculline_block,
                                  diazepam_gain=cfg.diazepam_gain, diazepam_tau_scale=cfg.diazepam_tau_scale,
                                  diazepam_tonic_mV=cfg.diazepam_tonic_mV)
        self._spp = self.sample_rate_hz * cfg.dt_ms * 1e-3  # samples per fine step
        self._fine_steps = int(round(cfg.fine_window_ms / cfg.dt_ms))
        rng = np.random.default_rng([self.seed, 0xC0170E])
        self._build(rng)
        self._reset_dynamics()

    # ---- construction ---------------------------------------------------------------------------------
    def _build(self, rng: np.random.Generator) -> None:
        cfg = self.config
        n = cfg.n_neurons
        n_exc = int(round(cfg.frac_exc * n))
        pos = self.layout.positions_um
        lo = pos.min(axis=0) - cfg.margin_um
        hi = pos.max(axis=0) + cfg.margin_um
        self.neuron_positions_um = lo + rng.random((n, 2)) * (hi - lo)
        self.is_exc = np.zeros(n, np.bool_)
        self.is_exc[:n_exc] = True
        self.n_neurons = n
        d = np.sqrt(((self.neuron_positions_um[:, None, :] - self.neuron_positions_um[None, :, :]) ** 2).sum(-1))
        lam = np.where(self.is_exc, cfg.lambda_exc_um, cfg.lambda_inh_um)[:, None]
        kern = np.exp(-d / lam)
        np.fill_diagonal(kern, 0.0)
        k_out = np.where(self.is_exc, cfg.out_degree_exc, cfg.out_degree_inh)
        prob = np.minimum(1.0, kern * (k_out / kern.sum(axis=1))[:, None])
        conn = rng.random((n, n)) < prob
        pre, post = np.nonzero(conn)  # sorted by pre, then post
        dist = d[pre, post]
        e_pre, e_post = self.is_exc[pre], self.is_exc[post]
        tm = np.where(e_post, cfg.tau_m_exc_ms, cfg.tau_m_inh_ms)
        ts = np.where(e_pre, cfg.tau_syn_exc_ms, cfg.tau_syn_inh_ms * self.effect.inh_tau_scale)
        peak = np.empty(len(pre))
        for key in {(a, b) for a, b in zip(tm.tolist(), ts.tolist())}:
            sel = (tm == key[0]) & (ts == key[1])
            peak[sel] = _psp_peak_per_unit(*key)
        psp = np.select([e_pre & e_post, e_pre & ~e_post, ~e_pre & e_post],
                        [cfg.epsp_ee_mV, cfg.epsp_ei_mV, cfg.ipsp_ie_mV], cfg.ipsp_ii_mV)
        sigma = math.sqrt(math.log(1.0 + cfg.weight_cv ** 2))
        lognorm = rng.lognormal(-0.5 * sigma ** 2, sigma, len(pre))
        w = psp / peak * lognorm
        w = np.where(e_pre, w, w * self.effect.inh_weight_scale)
        self._w0 = w.astype(np.float64)
        self._pre = pre.astype(np.int32)
        self._post = post.astype(np.int32)
        delay_ms = cfg.delay_min_ms + dist / cfg.conduction_um_per_ms
        self._delay = np.maximum(1, np.round(delay_ms / cfg.dt_ms)).astype(np.int64)
        self._ring_len = int(self._delay.max()) + 2
        self._out_ptr = np.searchsorted(pre, np.arange(n + 1)).astype(np.int64)
        self._plastic_syn = (e_pre & e_post)
        ee = np.flatnonzero(self._plastic_syn)
        order = ee[np.argsort(post[ee], kind="stable")]
        self._in_syn = order.astype(np.int64)
        self._in_ptr = np.searchsorted(post[order], np.arange(n + 1)).astype(np.int64)
        w_ee_mean = float(self._w0[self._plastic_syn].mean()) if ee.size else 1.0
        self._w_max = cfg.w_max_factor * w_ee_mean
        self._w_min = cfg.w_min_factor * w_ee_mean
        self._in_target = np.array([self._w0[self._in_syn[self._in_ptr[j]:self._in_ptr[j + 1]]].sum()
                                    for j in range(n)])
        # stimulation: per-neuron activation threshold factor
        s = math.sqrt(math.log(1.0 + cfg.act_threshold_cv ** 2))
        self._act_factor = rng.lognormal(-0.5 * s * s, s, n) * np.where(self.is_exc, 1.0, cfg.act_threshold_inh)
        self._d_elec = np.sqrt(((self.neuron_positions_um[:, None, :] - pos[None, :, :]) ** 2).sum(-1))
        self._ith_uA = cfg.act_i0_uA + cfg.act_uA_per_um2 * self._d_elec ** 2  # I_th(d), neuron x electrode
        self._drive_cache: dict[bytes, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}
        rate = np.where(self.is_exc, cfg.spont_exc_hz, cfg.spont_inh_hz)
        self._p_step = (rate * cfg.dt_ms * 1e-3).astype(np.float64)
        self._prm = self._params()
        self._noise_bank = ck.make_noise_bank(self.seed)

    def _params(self) -> np.ndarray:
        cfg = self.config
        dt = cfg.dt_ms
        tonic = self.effect.tonic_inh_mV
        vals = {
            # a tonic inhibitory drive T holds V at -T: the kernel's V is measured from that shifted rest,
            # so threshold, reset and the plasticity gate (all relative to the true rest) move up by T
            "dt_ms": dt, "spp": self._spp, "v_th": cfg.v_th_mV + tonic, "v_reset": cfg.v_reset_mV + tonic,
            "decay_m_e": math.exp(-dt / cfg.tau_m_exc_ms), "decay_m_i": math.exp(-dt / cfg.tau_m_inh_ms),
            "decay_se": math.exp(-dt / cfg.tau_syn_exc_ms),
            "decay_si": math.exp(-dt / (cfg.tau_syn_inh_ms * self.effect.inh_tau_scale)),
            "decay_a": math.exp(-dt / cfg.tau_adapt_ms), "a_inc": cfg.adapt_inc_mV,
            "ref_e": round(cfg.refractory_exc_ms / dt), "ref_i": round(cfg.refractory_inh_ms / dt),
            "noise_sd": cfg.noise_sd_mV, "decay_pre": math.exp(-dt / cfg.tau_plus_ms),
            "decay_post": math.exp(-dt / cfg.tau_minus_ms), "eta_plus": cfg.eta_plus,
            "eta_minus": cfg.eta_minus, "w_max": self._w_max, "gate_th": cfg.gate_th_mV + tonic,
            "gate_width": cfg.gate_width_mV, "plastic": 1.0 if self.effect.plasticity else 0.0,
            "w_min": self._w_min, "stp_u": cfg.stp_u, "decay_rec": math.exp(-dt / cfg.tau_rec_ms),
            "decay_sn": math.exp(-dt / cfg.tau_nmda_ms),
            "eta_het": cfg.eta_het,
            "nmda_jump": cfg.nmda_ratio * self.effect.nmda_drive_scale * cfg.tau_syn_exc_ms / cfg.tau_nmda_ms,
        }
        return np.array([vals[name] for name in ck.P_NAMES], np.float64)

    def _reset_dynamics(self) -> None:
        n = self.n_neurons
        self._V = np.zeros(n)
        self._IE = np.zeros(n)
        self._II = np.zeros(n)
        self._IN = np.zeros(n)
        self._A = np.zeros(n)
        self._xpre = np.zeros(n)
        self._ypost = np.zeros(n)
        self._refr = np.zeros(n, np.int64)
        self._forced = np.full(n, -1, np.int64)
        self._R = np.ones(n)
        self._ring_e = np.zeros((self._ring_len, n))
        self._ring_i = np.zeros((self._ring_len, n))
        self._w = self._w0.copy()
        self._k = 0  # next fine step to simulate
        self._last_fine = -1  # last fine step simulated (-1: none)
        self._fine_end = 0  # steps < _fine_end are in the fine regime
        self._now = 0
        self._pulses: list[tuple[int, np.ndarray]] = []  # (sample, current per electrode uA), sorted
        self._buf_s = np.empty(0, np.int64)
        self._buf_n = np.empty(0, np.int32)
        self._block_cache: tuple[int, np.ndarray, np.ndarray] | None = None

    # ---- time grid ------------------------------------------------------------------------------------
    @property
    def now_sample(self) -> int:
        return self._now

    def _step_start(self, k: int) -> int:
        return int(math.floor(k * self._spp + 1e-9))

    def _first_step_at(self, sample: int) -> int:
        """Smallest k with step_start(k) >= sample."""
        k = int(math.ceil(sample / self._spp))
        if k > 0 and self._step_start(k - 1) >= sample:
            k -= 1
        elif self._step_start(k) < sample:
            k += 1
        return max(k, 0)

    # ---- stimulation ----------------------------------------------------------------------------------
    def pulse_current_uA(self, pulse: BiphasicPulse) -> float:
        """Effective current of a pulse: peak amplitude (voltage pulses through the electrode impedance),
        scaled by the strength-duration relation relative to a 200 us phase."""
        amp = pulse.peak_amplitude
        if pulse.unit == "mV":
            amp = amp / self.config.electrode_impedance_kohm  # mV / kOhm = uA
        phase = max(pulse.phase1_us, pulse.phase2_us)
        c = self.config.chronaxie_us
        return float(amp * (1.0 + c / 200.0) / (1.0 + c / max(phase, 1e-3)))

    def stimulate(self, sample: int, electrodes: Sequence[int], pulse: BiphasicPulse) -> None:
        """Queue a pulse at absolute sample `sample` (>= now_sample) on `electrodes`."""
        if sample < self._now:
            raise ValueError(f"pulse at sample {sample} is before the network's time {self._now}")
        cur = np.zeros(self.layout.n_electrodes)
        cur[list(electrodes)] = self.pulse_current_uA(pulse)
        for i, (s, c) in enumerate(self._pulses):
            if s == sample:
                self._pulses[i] = (s, np.maximum(c, cur))
                return
        self._pulses.append((int(sample), cur))
        self._pulses.sort(key=lambda p: p[0])

    def _apply_pulse(self, k: int, sample: int, cur: np.ndarray) -> None:
        """Direct activation: each neuron fires with a probability set by its drive ratio I / I_th(d)."""
        cfg = self.config
        stim = np.flatnonzero(cur > 0)
        if stim.size == 0:
            return
        p, local_drive_mV, local_gaba_mV = self._drive(cur, stim)
        u = ck.hash_u01_array(self.seed, ck.STREAM_PULSE, sample, self.n_neurons)
        fire = np.flatnonzero(u < p)
        lat = ck.hash_u01_array(self.seed, ck.STREAM_LATENCY, sample, self.n_neurons)[fire]
        lat_ms = cfg.latency_min_ms + lat * (cfg.latency_max_ms - cfg.latency_min_ms)
        self._forced[fire] = k + np.maximum(1, np.round(lat_ms / cfg.dt_ms)).astype(np.int64)
        self._fine_end = max(self._fine_end, k + self._fine_steps)
        if cfg.local_drive_mV > 0:
            self._relax_to(k)
            self._IN += local_drive_mV
            if local_gaba_mV is not None:
                self._II += local_gaba_mV

    def _drive(self, cur: np.ndarray, stim: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(firing probability, local slow drive in mV, the drug's change to the local GABA-A drive in mV or
        None) of each neuron under the pulse currents `cur` on the electrodes `stim`.

        The local drive is the net of a pulse's mixed local response: the axon terminals a pulse activates near
        its electrode release GABA as well as glutamate. Its GABA-A part (`local_inh_share` x the net) follows
        a GABA-A drug as every GABA-A synapse does, so the drug adds (inh_weight_scale - 1) x that part.
        A protocol repeats a few patterns, so each is computed once and kept."""
        key = cur.tobytes()
        hit = self._drive_cache.get(key)
        if hit is None:
            cfg = self.config
            ith = self._ith_uA[:, stim]
            ratio = (cur[stim][None, :] / ith).max(axis=1) / self._act_factor
            p = 1.0 / (1.0 + np.exp(-(ratio - 1.0) / cfg.act_slope))
            local_net_mV = cfg.local_drive_mV * np.minimum(ratio, cfg.local_drive_cap)
            local_mV = local_net_mV * self.effect.nmda_drive_scale
            gaba_change = (self.effect.inh_weight_scale - 1.0) * cfg.local_inh_share
            local_gaba_mV = local_net_mV * gaba_change if gaba_change != 0.0 else None
            if len(self._drive_cache) >= DRIVE_CACHE_PATTERNS:
                self._drive_cache.clear()
            hit = self._drive_cache[key] = (p, local_mV, local_gaba_mV)
        return hit

    # ---- simulation -----------------------------------------------------------------------------------
    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Spontaneous spikes of block b as (step, neuron, sample), sorted by (sample, neuron)."""
        if self._block_cache is None or self._block_cache[0] != b:
            self._block_cache = (b, *self._draw_block(b))
        return self._block_cache[1:]

    def _draw_block(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Background Poisson spikes and network-burst spikes of block b, merged, sorted by (sample, neuron)
        (a neuron spiking twice in one step counts once)."""
        cfg = self.config
        st, nr, smp = ck.spont_block(self.seed, b, cfg.spont_block_steps, self._p_step, self._spp)
        if cfg.burst_rate_per_min <= 0:
            return st, nr, smp
        bst, bnr = ck.burst_block(
            self.seed, b, cfg.spont_block_steps, self.neuron_positions_um[:, 0], self.neuron_positions_um[:, 1],
            cfg.burst_rate_per_min / 60.0 * cfg.spont_block_steps * cfg.dt_ms * 1e-3,
            cfg.burst_duration_ms / cfg.dt_ms, cfg.burst_duration_sigma, cfg.burst_speed_um_per_ms * cfg.dt_ms,
            cfg.burst_participation, cfg.burst_rate_hz * cfg.dt_ms * 1e-3)
        if bst.size == 0:
            return st, nr, smp
        bsmp = ck.spike_samples_array(self.seed, bst, bnr, self._spp)
        st, nr, smp = np.concatenate((st, bst)), np.concatenate((nr, bnr)), np.concatenate((smp, bsmp))
        _, first = np.unique(smp * self.n_neurons + nr, return_index=True)
        return st[first], nr[first], smp[first]

    def _spont(self, ka: int, kb: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Spontaneous spikes (step, neuron, sample) in steps [ka, kb), sorted by (sample, neuron)."""
        B = self.config.spont_block_steps
        parts = []
        for b in range(ka // B, (kb - 1) // B + 1):
            st, nr, smp = self._block(b)
            lo, hi = np.searchsorted(st, [ka, kb])
            parts.append((st[lo:hi], nr[lo:hi], smp[lo:hi]))
        if len(parts) == 1:
            return parts[0]
        return tuple(np.concatenate(x) for x in zip(*parts))

    def _coarse(self, ka: int, kb: int) -> tuple[np.ndarray, np.ndarray]:
        _, nr, smp = self._spont(ka, kb)
        return smp, nr

    def _relax_to(self, ka: int) -> None:
        """Bring the state to the end of step ka - 1 (analytic relaxation over the coarse steps since the
        last fine one); a no-op inside a fine window."""
        if self._last_fine != ka - 1:
            gap = ka - 1 - self._last_fine if self._last_fine >= 0 else 10 ** 6
            ck.decay_state(gap, self._prm, self.is_exc, self._V, self._IE, self._II, self._IN, self._A, self._xpre,
                           self._ypost, self._ring_e, self._ring_i, self._refr, self._R)
            self._last_fine = ka - 1

    def _fine(self, ka: int, kb: int) -> tuple[np.ndarray, np.ndarray]:
        self._relax_to(ka)
        st, nr, _ = self._spont(ka, kb)
        out_s = np.empty(256, np.int64)
        out_n = np.empty(256, np.int32)
        m, out_s, out_n = ck.run_fine(ka, kb, self.seed, self._prm, self.is_exc, self._V, self._IE, self._II,
                                      self._IN, self._A, self._xpre, self._ypost, self._refr, self._forced, self._R,
                                      self._ring_e, self._ring_i, self._out_ptr, self._post, self._delay,
                                      self._w, self._plastic_syn, self._in_ptr, self._in_syn, self._pre,
                                      st, nr, self._noise_bank, out_s, out_n, 0)
        self._last_fine = kb - 1
        if kb == self._fine_end and self.effect.plasticity and self.config.scaling_rate > 0:
            ck.normalise_incoming(self._w, self._in_ptr, self._in_syn, self._in_target,
                                  self.config.scaling_rate, self._w_max)
        return out_s[:m], out_n[:m]

    def _simulate_steps(self, k_end: int) -> tuple[list, list, bool]:
        """Simulate steps [self._k, k_end): spike parts, and whether they need sorting."""
        parts_s, parts_n = [], []
        fine = False
        k = self._k
        while k < k_end:
            kp = self._first_step_at(self._pulses[0][0]) if self._pulses else None
            if kp is not None and kp == k:
                p_sample, cur = self._pulses.pop(0)
                self._apply_pulse(k, p_sample, cur)
                continue
            stop = k_end if kp is None else min(k_end, kp)
            if k < self._fine_end:
                kb = min(stop, self._fine_end)
                s, nr = self._fine(k, kb)
                fine = True
            else:
                kb = stop
                s, nr = self._coarse(k, kb)
            parts_s.append(s)
            parts_n.append(nr)
            k = kb
        self._k = k
        return parts_s, parts_n, fine

    def advance(self, until_sample: int) -> tuple[np.ndarray, np.ndarray]:
        """Simulate to `until_sample` (exclusive); return neuron spikes (sample int64 sorted, neuron int32).

        Steps whose start is before `until_sample` are simulated; their spikes at or after it are kept for
        the next call, so any split of time gives the same spikes."""
        until = int(until_sample)
        if until <= self._now:
            return np.empty(0, np.int64), np.empty(0, np.int32)
        parts_s, parts_n, fine = self._simulate_steps(self._first_step_at(until))
        if len(self._buf_s):
            parts_s.insert(0, self._buf_s)
            parts_n.insert(0, self._buf_n)
        if not parts_s:
            s, nr = np.empty(0, np.int64), np.empty(0, np.int32)
        elif len(parts_s) == 1 and not fine:
            s, nr = parts_s[0], parts_n[0]
        else:
            s, nr = np.concatenate(parts_s), np.concatenate(parts_n).astype(np.int32, copy=False)
            order = np.lexsort((nr, s))
            s, nr = s[order], nr[order]
        cut = int(np.searchsorted(s, until))
        self._buf_s, self._buf_n = s[cut:], nr[cut:]
        self._now = until
        return s[:cut], nr[:cut]

    def fast_forward(self, until_sample: int) -> None:
        """Skip a rest: nothing is returned and no pulses may fall inside; the state relaxes analytically
        when the next fine window starts (spontaneous spikes in a rest are not generated at all)."""
        until = int(until_sample)
        if until <= self._now:
            return
        if self._pulses and self._pulses[0][0] < until:
            raise ValueError("fast_forward over a queued pulse")
        k_end = self._first_step_at(until)
        if self._k < self._fine_end:  # finish a fine window that is still running (deterministically)
            self._simulate_steps(min(k_end, self._fine_end))
        self._k = max(self._k, k_end)
        keep = self._buf_s >= until
        self._buf_s, self._buf_n = self._buf_s[keep], self._buf_n[keep]
        self._now = until

    # ---- inspection and checkpoints ---------------------------------------------------------------------
    @property
    def weights(self) -> np.ndarray:
        """Current synaptic weights (drive jump in mV), one per synapse; `synapses` gives (pre, post)."""
        return self._w

    @property
    def synapses(self) -> tuple[np.ndarray, np.ndarray]:
        return self._pre, self._post

    @property
    def plastic_mask(self) -> np.ndarray:
        return self._plastic_syn

    _STATE = ("_V", "_IE", "_II", "_IN", "_A", "_xpre", "_ypost", "_refr", "_forced", "_R", "_ring_e", "_ring_i", "_w",
              "_buf_s", "_buf_n")

    def get_state(self) -> dict:
        st = {name: getattr(self, name).copy() for name in self._STATE}
        st.update(k=self._k, last_fine=self._last_fine, fine_end=self._fine_end, now=self._now,
                  pulses=[(s, c.copy()) for s, c in self._pulses], seed=self.seed, drug=self.drug,
                  config=asdict(self.config))
        return st

    def set_state(self, state: dict) -> None:
        if state["seed"] != self.seed or state["drug"] != self.drug:
            raise ValueError(f"the culture state is of seed {state['seed']}, drug {state['drug']}; this culture is "
                             f"seed {self.seed}, drug {self.drug}")
        saved, now = state["config"], asdict(self.config)
        if saved != now:
            fields = sorted(k for k in saved.keys() | now.keys() if saved.get(k, "absent") != now.get(k, "absent"))
            shown = ", ".join(f"{k} {saved.get(k, 'absent')} -> {now.get(k, 'absent')}" for k in fields[:4])
            raise ValueError(f"the culture model changed since the state was saved ({shown}"
                             f"{', ...' if len(fields) > 4 else ''}), so the network cannot go on where it stopped")
        for name in self._STATE:
            setattr(self, name, state[name].copy())
        self._k, self._last_fine = int(state["k"]), int(state["last_fine"])
        self._fine_end, self._now = int(state["fine_end"]), int(state["now"])
        self._pulses = [(int(s), c.copy()) for s, c in state["pulses"]]
        self._block_cache = None


def with_overrides(config: CultureConfig, **kw) -> CultureConfig:
    """A copy of `config` with some fields replaced (for studies and tests)."""
    return replace(config, **kw)


_KERNELS_READY = False


def compile_kernels() -> None:
    """Compile (or load from numba's cache) every kernel a culture runs, on a small throwaway culture.

    A culture compiles its fine-window kernels at its first pulse. Behind an emulated device that stall is
    seconds of silence on the wire in a fresh install, which a driver rightly reads as a dead device; an
    emulator calls this before it streams. Once per process; milliseconds when numba's cache is warm."""
    global _KERNELS_READY
    if _KERNELS_READY:
        return
    fs = 25000
    culture = Culture(ElectrodeLayout.grid(2, 2, 200.0), fs, 0, config=CultureConfig(n_neurons=40))
    culture.stimulate(fs // 10, [0], BiphasicPulse.symmetric(1000.0, 200.0, "mV"))
    culture.advance(fs // 2)
    _KERNELS_READY = True
