"""A Gymnasium environment over any rig (issue 17, item 5): `CultureEnv`, registered as `rigctl/Culture-v0`.

    import gymnasium, rigctl.gym
    env = gymnasium.make("rigctl/Culture-v0")          # the simulated rig (sim-events), default patterns
    # or, with no import of rigctl.gym: gymnasium.make("rigctl.gym:rigctl/Culture-v0")

Part of the composition root (it opens rigs, which may be simulated): tests/test_layers.py. docs/gym.md.
`rigctl.gym.protocol` needs no gymnasium, so a gym run's directory is read without it.
"""

from __future__ import annotations

try:
    import gymnasium
except ImportError:  # `pip install 'rigctl[gym]'`; the protocol module still loads (readers of a gym run)
    gymnasium = None

ENV_ID = "rigctl/Culture-v0"

if gymnasium is not None:
    from rigctl.gym.env import (ActionError, CultureEnv, EnvStateError, TargetReward, default_patterns,
                                default_target)
    from rigctl.gym.protocol import GymParams, GymProtocol, Pattern

    def register() -> None:
        """Register `rigctl/Culture-v0` (the simulated rig, `sim-events`) once; done at import."""
        if ENV_ID not in gymnasium.registry:
            gymnasium.register(id=ENV_ID, entry_point="rigctl.gym.env:CultureEnv", kwargs={"rig": "sim-events"},
                               nondeterministic=False)

    register()

    __all__ = ["ENV_ID", "ActionError", "CultureEnv", "EnvStateError", "GymParams", "GymProtocol", "Pattern",
               "TargetReward", "default_patterns", "default_target", "register"]
else:
    def __getattr__(name: str):
        raise ImportError(f"rigctl.gym.{name} needs gymnasium: pip install 'rigctl[gym]'")
