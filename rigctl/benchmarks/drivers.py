"""`rigctl bench drivers`: each driver against its emulator on this machine (pty / loopback).

Figures: the time to arm one pulse (Pulse Pal: changed parameters + trigger + confirmation ack; RHX:
`get CurrentTimestamp` + one set/upload/trigger batch confirmed by a `get`; MaxLab: power-up, a sequence of
seven commands, send and delete, one TCP connection each) and how many times faster than real time the data
drivers read 64 channels at 25 kHz (MaxLab: 64 of 1024 channels at 20 kHz, one frame per ZMQ message, as
MaxLab is seen to send). The culture behind the emulators is a cheap
deterministic ramp, so the figures are the wire's and the drivers', not the simulation's.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from rigctl.layout import ElectrodeLayout
from rigctl.types import BiphasicPulse, Chunk, StimCommand


class RampBackend:
    """A culture stand-in whose samples cost nothing to make; pulses are counted, not simulated."""

    def __init__(self, n_channels: int = 64, sample_rate_hz: float = 25000.0, chunk_samples: int = 250):
        self.sample_rate_hz = sample_rate_hz
        self.n_channels = n_channels
        self.layout = ElectrodeLayout.grid(n_channels // 8, 8, 200.0)
        self.uV_per_bit = 0.195
        self.chunk_samples = chunk_samples
        self.now_sample = 0
        self.pulses = 0
        self._block = (np.arange(chunk_samples * n_channels, dtype=np.int64) % 2001 - 1000).astype(np.int16)
        self._block = self._block.reshape(chunk_samples, n_channels)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def schedule(self, command: StimCommand) -> None:
        self.pulses += 1

    def read(self) -> Chunk:
        first = self.now_sample
        self.now_sample += self.chunk_samples
        return Chunk(first, self._block, self.uV_per_bit, self.sample_rate_hz)


def _summary(seconds: list[float]) -> dict:
    xs = sorted(seconds)
    return {"median_ms": round(statistics.median(xs) * 1e3, 3), "p95_ms": round(xs[max(0, int(0.95 * len(xs)) - 1)] * 1e3, 3),
            "n": len(xs)}


def bench_pulsepal(n: int = 200) -> dict:
    from rigctl.drivers.pulsepal import PulsePal
    from rigctl.sim._emulator_backend import StimulusBus
    from rigctl.sim.pulsepal_emulator import PulsePalEmulator

    backend = RampBackend(8)
    bus = StimulusBus(backend)
    wiring = {1: (0,), 2: (1,)}
    emu = PulsePalEmulator(bus, wiring, sample_rate_hz=backend.sample_rate_hz).start()
    drv = PulsePal(emu.port, wiring, backend.sample_rate_hz)
    pulse = BiphasicPulse.symmetric(1250.0, 200.0, "mV")
    times = []
    try:
        for k in range(n):
            bus.read()
            drv.on_chunk(backend.now_sample)
            before = drv.triggers_sent
            t = time.perf_counter()
            drv.schedule(StimCommand(backend.now_sample + 400 + (k % 7) * 5, (k % 2,), pulse))  # due: armed now
            dt = time.perf_counter() - t
            if drv.triggers_sent == before + 1:
                times.append(dt)
            bus.read()
            drv.on_chunk(backend.now_sample)
    finally:
        drv.close()
        emu.close()
    return {"arm": _summary(times)}


def _arm_times(drv, n_arms: int, ahead_samples: int, pulse_of) -> list[float]:
    """Seconds `schedule` took for each of `n_arms` pulses (electrode k % 64, `ahead_samples` ahead) that armed a
    trigger at once; the stream is read on until each pulse has passed."""
    times = []
    for k in range(n_arms):
        before = drv.triggers_sent
        cmd = StimCommand(drv.clock + ahead_samples, (k % 64,), pulse_of(k))
        t = time.perf_counter()
        drv.schedule(cmd)
        dt = time.perf_counter() - t
        if drv.triggers_sent == before + 1:
            times.append(dt)
        while drv.clock < cmd.sample + 100:
            drv.on_chunk(drv.read().end_sample)
    return times


def bench_rhx(seconds: float = 10.0, n_arms: int = 60) -> dict:
    from rigctl.drivers.intan_rhx import IntanRHX
    from rigctl.sim.rhx_emulator import RHXEmulator

    backend = RampBackend(64)
    emu = RHXEmulator(backend).start()
    drv = IntanRHX("127.0.0.1", emu.command_port, electrode_channels=emu.names)
    try:
        drv.start()
        end = int(seconds * backend.sample_rate_hz)
        t0 = time.perf_counter()
        while drv.clock < end:
            drv.on_chunk(drv.read().end_sample)
        speed = drv.clock / backend.sample_rate_hz / (time.perf_counter() - t0)
        times = _arm_times(drv, n_arms, 6000, lambda k: BiphasicPulse.symmetric(10.0 + k % 3, 200.0, "uA"))
    finally:
        drv.close()
        emu.close()
    return {"arm": _summary(times), "read_x_realtime_64ch": round(speed, 2)}


def bench_openephys(seconds: float = 10.0) -> dict:
    from rigctl.drivers.openephys import OpenEphysGUI
    from rigctl.sim.openephys_emulator import OpenEphysEmulator

    backend = RampBackend(64)
    emu = OpenEphysEmulator(backend).start()
    drv = OpenEphysGUI("127.0.0.1", emu.http_port)
    try:
        drv.start()
        drv.read()
        s0, t0 = drv.clock, time.perf_counter()
        while drv.clock < s0 + int(seconds * backend.sample_rate_hz):
            drv.read()
        speed = (drv.clock - s0) / backend.sample_rate_hz / (time.perf_counter() - t0)
    finally:
        drv.stop()
        emu.close()
    return {"read_x_realtime_64ch": round(speed, 2)}


def bench_maxlab(seconds: float = 10.0, n_arms: int = 40) -> dict:
    from rigctl.drivers.maxlab import MaxLab
    from rigctl.sim.maxlab_emulator import MaxLabEmulator, default_electrodes

    backend = RampBackend(64, 20000.0, 200)
    holder: list = []
    emu = MaxLabEmulator(backend, columns=list(range(64)), clock=lambda: holder[0].frame_clock if holder else None,
                         lead_s=0.25).start()
    drv = MaxLab("127.0.0.1", emu.command_port, channels=list(range(64)), electrodes=default_electrodes(64),
                 data_port=emu.data_port, arm_ahead_ms=250.0)
    holder.append(drv)
    try:
        drv.start()
        drv.read()
        s0, t0 = drv.clock, time.perf_counter()
        while drv.clock < s0 + int(seconds * drv.fs):
            drv.on_chunk(drv.read().end_sample)
        speed = (drv.clock - s0) / drv.fs / (time.perf_counter() - t0)
        # due within arm_ahead_ms: armed at once
        times = _arm_times(drv, n_arms, 4000, lambda k: BiphasicPulse.symmetric(1000.5, 200.0, "mV"))
    finally:
        drv.close()
        emu.close()
    return {"arm": _summary(times), "read_x_realtime_64_of_1024ch": round(speed, 2)}


def run(seconds: float = 10.0) -> dict:
    """Print one line per figure and return them all."""
    out = {"pulsepal": bench_pulsepal(), "rhx": bench_rhx(seconds), "openephys": bench_openephys(seconds),
           "maxlab": bench_maxlab(seconds)}
    a = out["pulsepal"]["arm"]
    print(f"pulsepal  arm one pulse (pty):            median {a['median_ms']} ms, p95 {a['p95_ms']} ms (n={a['n']})")
    a = out["rhx"]["arm"]
    print(f"rhx       arm one pulse (loopback):       median {a['median_ms']} ms, p95 {a['p95_ms']} ms (n={a['n']})")
    print(f"rhx       read 64 ch at 25 kHz:           {out['rhx']['read_x_realtime_64ch']} x real time")
    print(f"openephys read 64 ch at 25 kHz:           {out['openephys']['read_x_realtime_64ch']} x real time")
    a = out["maxlab"]["arm"]
    print(f"maxlab    arm one pulse (loopback):       median {a['median_ms']} ms, p95 {a['p95_ms']} ms (n={a['n']})")
    print(f"maxlab    read 64 of 1024 ch at 20 kHz:   {out['maxlab']['read_x_realtime_64_of_1024ch']} x real time "
          "(one frame per message)")
    return out
