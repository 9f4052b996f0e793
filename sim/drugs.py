"""Drug conditions of the simulated culture: each is a documented change to the network's parameters.

Concentrations in the reference experiment are [unknown] (../shared/spec/isomura2023.md 1.5); the sizes
below are chosen to give the qualitative effects the spec lists (bicuculline raises, diazepam lowers the
evoked response; APV blocks NMDA-dependent plasticity), not fitted to a dose.
"""

from __future__ import annotations

from dataclasses import dataclass

DRUGS = ("none", "bicuculline", "diazepam", "apv")


@dataclass(frozen=True)
class DrugEffect:
    """Multipliers applied to the culture's parameters by a drug."""

    inh_weight_scale: float = 1.0  # GABA-A synaptic efficacy (all inhibitory synapses)
    inh_tau_scale: float = 1.0  # GABA-A decay time constant
    plasticity: bool = True  # NMDA-receptor-dependent STDP (potentiation and depression) on
    nmda_drive_scale: float = 1.0  # excitatory synaptic drive carried by the NMDA component
    tonic_inh_mV: float = 0.0  # steady hyperpolarising drive of a tonic (extrasynaptic) GABA-A current


def drug_effect(drug: str, *, bicuculline_block: float = 0.4, diazepam_gain: float = 2.4,
                diazepam_tau_scale: float = 1.5, diazepam_tonic_mV: float = 0.0,
                nmda_block: float = 0.2) -> DrugEffect:
    """The effect of `drug` on the network.

    - bicuculline: competitive GABA-A antagonist; the dose is [unknown] (spec 1.5), so it is
      modelled as a partial block: inhibitory efficacy x (1 - bicuculline_block) (the culture's default,
      CultureConfig.bicuculline_block: 60 %).
    - diazepam: positive allosteric modulator of GABA-A; raises the amplitude and prolongs the decay of
      IPSCs, and enhances the tonic current of extrasynaptic (alpha5) GABA-A receptors, which shunts the
      depolarisation NMDA-dependent plasticity needs (benzodiazepines block LTP induction). Modelled as
      inhibitory efficacy x diazepam_gain, decay time x diazepam_tau_scale, and a steady hyperpolarising
      drive of diazepam_tonic_mV that both the membrane and the plasticity gate feel.
    - Both GABA-A drugs also scale the GABA-A part of a pulse's local response by inh_weight_scale
      (`Culture._drive`, `CultureConfig.local_inh_share`).
    - apv: NMDA-receptor antagonist; blocks NMDA-dependent Hebbian plasticity (both directions here) and
      removes the fraction `nmda_block` of the model's slow excitatory drive. That slow current lumps the
      NMDA current with other slow excitation (recurrent reverberation the LIF network lacks); removing all
      of it silenced the evoked response, which APV-treated cultures do not show, so APV removes 20 %.
    """
    if drug == "none":
        return DrugEffect()
    if drug == "bicuculline":
        return DrugEffect(inh_weight_scale=1.0 - bicuculline_block)
    if drug == "diazepam":
        return DrugEffect(inh_weight_scale=diazepam_gain, inh_tau_scale=diazepam_tau_scale,
                          tonic_inh_mV=diazepam_tonic_mV)
    if drug == "apv":
        return DrugEffect(plasticity=False, nmda_drive_scale=1.0 - nmda_block)
    raise ValueError(f"unknown drug {drug!r}; expected one of {', '.join(DRUGS)}")
