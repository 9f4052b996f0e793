"""The simulated rig: a spiking culture on a virtual MEA, and device emulators speaking real wire protocols."""
