"""`rigctl emulate pulsepal|rhx|openephys|maxlab`: run one device emulator on its own, wired to a simulated
culture, and print where to connect, so any client (rigctl's driver or the vendor's) can talk to it."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from typing import Any, Callable, TypeVar

from rigctl.commands._argtypes import finite_float_in, port_number, sample_rate_hz, seed
from rigctl.errors import DeviceError, RigctlError
from rigctl.protocol import DRUGS

DEVICES = ("pulsepal", "rhx", "openephys", "maxlab")
DEFAULT_PORTS = {"rhx": 5000, "openephys": 37497, "maxlab": 7215}
MAXLAB_RATE_HZ = 20000.0  # MaxLab streams at 20 kHz
#: --duration-s: up to 30 days (without it the emulator runs until Ctrl-C).
MAX_DURATION_S = 30 * 86400.0

_T = TypeVar("_T")


def _parse_outputs(text: str) -> dict[int, tuple[int, ...]]:
    """`1:0,2:2+3` -> {1: (0,), 2: (2, 3)}."""
    out: dict[int, tuple[int, ...]] = {}
    try:
        for part in text.split(","):
            ch, els = part.split(":")
            if int(ch) in out:
                raise argparse.ArgumentTypeError(f"{text!r}: output {int(ch)} given twice; allowed: each output once")
            out[int(ch)] = tuple(int(e) for e in els.split("+"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: allowed: OUTPUT:ELECTRODE[+ELECTRODE...],... "
                                         "e.g. 1:0,2:2,3:4,4:6") from exc
    bad = [k for k in out if not 1 <= k <= 4]
    if bad:
        raise argparse.ArgumentTypeError(f"output(s) {bad}: allowed: 1..4")
    negative = sorted({e for els in out.values() for e in els if e < 0})
    if negative:
        raise argparse.ArgumentTypeError(f"{text!r}: electrode(s) {negative}: allowed: electrodes >= 0")
    return out


def _format_outputs(outputs: dict[int, tuple[int, ...]]) -> str:
    """{1: (0,), 2: (2, 3)} -> `1:0,2:2+3` (the --outputs syntax)."""
    return ",".join(f"{k}:{'+'.join(str(e) for e in v)}" for k, v in outputs.items())


def _check_outputs(args: argparse.Namespace, backend) -> None:
    """Every wired electrode exists on the culture the emulator drives."""
    n = getattr(backend, "n_channels", None)
    if not isinstance(n, int):
        return
    for els in args.outputs.values():
        for e in els:
            if not 0 <= e < n:
                raise RigctlError(f"emulate pulsepal --outputs {_format_outputs(args.outputs)}: electrode {e}: "
                                  f"allowed: 0 to {n - 1} (the simulated culture's electrodes)")


def _listen(args: argparse.Namespace, start: Callable[[], _T]) -> _T:
    """`start()` an emulator's sockets; a bad --host, a port in use or refused is one DeviceError line."""
    errors: tuple[type[BaseException], ...] = (OSError, OverflowError)
    try:
        import zmq
        errors += (zmq.ZMQError,)
    except ImportError:
        pass
    try:
        return start()
    except errors as exc:
        port = DEFAULT_PORTS[args.device] if args.port is None else args.port
        reason = getattr(exc, "strerror", None) or str(exc)
        raise DeviceError(f"emulate {args.device} --host {args.host} --port {port}: cannot listen ({reason})") from None


def _sim_backend(args: argparse.Namespace, mode: str):
    from rigctl.sim.rig import SimRig

    try:
        return SimRig(sample_rate_hz=args.sample_rate_hz, seed=args.seed, mode=mode, drug=args.drug,
                      realtime=args.realtime)
    except ImportError as exc:
        raise RigctlError(f"the simulated culture is not available in this build ({exc})") from exc


class _WallClockReader:
    """Reads the culture in step with the wall clock, for emulators that serve no data themselves."""

    def __init__(self, bus, stop: threading.Event):
        self.bus = bus
        self.stop = stop
        self.thread = threading.Thread(target=self._run, name="culture-clock", daemon=True)

    def _run(self) -> None:
        fs = self.bus.sample_rate_hz
        t0, s0 = time.monotonic(), self.bus.now_sample
        self.bus.start()
        while not self.stop.is_set():
            due = t0 + (self.bus.now_sample - s0) / fs
            if self.stop.wait(max(0.0, due - time.monotonic())):
                break
            self.bus.read()


def serve_pulsepal(args: argparse.Namespace, backend, ready: Callable[[dict], None], stop: threading.Event) -> int:
    from rigctl.sim._emulator_backend import StimulusBus
    from rigctl.sim.pulsepal_emulator import PulsePalEmulator

    bus = StimulusBus(backend)
    emu = PulsePalEmulator(bus, args.outputs, sample_rate_hz=backend.sample_rate_hz).start()

    def show(cmd) -> None:
        p = cmd.pulse
        print(f"pulse at sample {cmd.sample} on electrodes {list(cmd.electrodes)}: {p.phase1_amplitude:g}/"
              f"{p.phase2_amplitude:g} {p.unit}, {p.phase1_us:g}/{p.interphase_us:g}/{p.phase2_us:g} µs", flush=True)

    emu.on_pulse = show
    clock = _WallClockReader(bus, stop)
    clock.thread.start()
    try:
        ready({"device": "pulsepal", "port": emu.port, "firmware_version": emu.firmware_version,
               "outputs": {k: list(v) for k, v in args.outputs.items()}})
        stop.wait(args.duration_s)
    finally:
        stop.set()
        clock.thread.join(timeout=2.0)
        emu.close()
    return 0


def serve_rhx(args: argparse.Namespace, backend, ready: Callable[[dict], None], stop: threading.Event) -> int:
    from rigctl.drivers import _rhx_wire as rw
    from rigctl.sim.rhx_emulator import RHXEmulator

    port = DEFAULT_PORTS["rhx"] if args.port is None else args.port
    emu = _listen(args, lambda: RHXEmulator(backend, host=args.host, command_port=port, realtime=args.realtime,
                                            channel_names=rw.default_channel_names(backend.n_channels)).start())
    try:
        ready({"device": "rhx", "host": args.host, "command_port": emu.command_port,
               "waveform_port": "opens on `execute ConnectTCPWaveformDataOutput` (default 5001 or a free port)",
               "channels": f"{emu.names[0]}..{emu.names[-1]} = electrodes 0..{len(emu.names) - 1}",
               "sample_rate_hz": emu.fs, "stim_step_uA": emu.step_uA,
               "time": "wall clock" if args.realtime else "as fast as the client reads"})
        _wait_or_relisten(emu, stop, args.duration_s)
    finally:
        emu.close()
    return 0


def _wait_or_relisten(emu, stop: threading.Event, duration_s: float | None) -> None:
    """Standing in for the operator: press Connect again whenever a command client has left."""
    deadline = None if duration_s is None else time.monotonic() + duration_s
    while not stop.wait(0.1):
        if deadline is not None and time.monotonic() > deadline:
            return
        if emu.command_status == "Disconnected":
            emu.press_connect()


def serve_openephys(args: argparse.Namespace, backend, ready: Callable[[dict], None], stop: threading.Event) -> int:
    from rigctl.sim.openephys_emulator import OpenEphysEmulator

    port = DEFAULT_PORTS["openephys"] if args.port is None else args.port
    emu = _listen(args, lambda: OpenEphysEmulator(backend, host=args.host, http_port=port,
                                                  realtime=args.realtime).start())
    try:
        ready({"device": "openephys", "http": f"http://{args.host}:{emu.http_port}/api/status",
               "zmq_data": f"tcp://{args.host}:{emu.data_port}", "zmq_heartbeat": f"tcp://{args.host}:{emu.data_port + 1}",
               "stream": f"{emu.stream}, {emu.n} channels at {emu.fs:g} Hz",
               "time": "wall clock" if args.realtime else "as fast as the subscriber reads"})
        stop.wait(args.duration_s)
    finally:
        emu.close()
    return 0


def serve_maxlab(args: argparse.Namespace, backend, ready: Callable[[dict], None], stop: threading.Event) -> int:
    from rigctl.drivers import _maxlab_wire as mw
    from rigctl.sim.maxlab_emulator import MaxLabEmulator, default_electrodes

    port = DEFAULT_PORTS["maxlab"] if args.port is None else args.port
    data_port = mw.RAW_PORT if args.port is None else 0
    n = backend.n_channels
    wells = getattr(args, "wells", 1)
    electrodes = default_electrodes(n)

    def show(cmd) -> None:
        p = cmd.pulse
        print(f"pulse at frame {cmd.sample} on culture electrodes {list(cmd.electrodes)}: {p.phase1_amplitude:g}/"
              f"{p.phase2_amplitude:g} mV, {p.phase1_us:g}/{p.interphase_us:g}/{p.phase2_us:g} µs", flush=True)

    emu = _listen(args, lambda: MaxLabEmulator(backend, wells=wells, seed=args.seed, host=args.host, command_port=port,
                                               data_port=data_port, realtime=args.realtime).start())
    emu.on_pulse = show
    try:
        ready({"device": "maxlab", "host": args.host, "command_port": emu.command_port,
               "raw_stream": f"tcp://{args.host}:{emu.data_port} (ZMQ PUB, one frame per message)",
               "stream": f"{wells} well(s) x {mw.CHANNELS_PER_WELL} channels at {emu.fs:g} Hz; culture electrodes "
                         f"0..{n - 1} = columns 0..{n - 1}, the rest noise",
               "electrodes": f"MEA electrodes {electrodes[0]}..{electrodes[-1]} (8-wide grid, 12 apart) = culture "
                             f"electrodes 0..{n - 1}",
               "dac_lsb_mV": emu.lsb_mV, "time": "wall clock" if args.realtime else "as fast as the subscriber reads"})
        stop.wait(args.duration_s)
    finally:
        emu.close()
    return 0


SERVERS: dict[str, Callable[..., int]] = {"pulsepal": serve_pulsepal, "rhx": serve_rhx,
                                          "openephys": serve_openephys, "maxlab": serve_maxlab}


def _print_ready(info: dict) -> None:
    lines = [f"{info['device']} emulator ready"]
    lines += [f"  {k}: {v}" for k, v in info.items() if k != "device"]
    print("\n".join(lines), flush=True)


def run_emulator(args: argparse.Namespace, backend_factory: Callable[[argparse.Namespace, str], Any] = _sim_backend,
                 ready: Callable[[dict], None] = _print_ready, stop: threading.Event | None = None) -> int:
    if args.device not in SERVERS:
        raise RigctlError(f"emulate {args.device}: not available in this build; allowed: {', '.join(sorted(SERVERS))}")
    if args.device != "pulsepal" and args.mode != "voltage":
        raise RigctlError(f"emulate {args.device} --mode {args.mode}: allowed: voltage (the emulator serves traces)")
    mode = "events" if args.device == "pulsepal" else "voltage"
    if args.device == "maxlab":
        if args.sample_rate_hz not in (None, MAXLAB_RATE_HZ):
            raise RigctlError(f"emulate maxlab --sample-rate-hz {args.sample_rate_hz:g}: allowed: 20000 (MaxLab's rate)")
        args.sample_rate_hz = MAXLAB_RATE_HZ
    elif args.sample_rate_hz is None:
        args.sample_rate_hz = 25000.0
    backend = backend_factory(args, mode)
    if args.device == "pulsepal":
        _check_outputs(args, backend)
    return SERVERS[args.device](args, backend, ready, stop or threading.Event())


def _main(args: argparse.Namespace) -> int:
    try:
        return run_emulator(args)
    except KeyboardInterrupt:
        print("emulator stopped", file=sys.stderr)
        return 0


def _bench(args: argparse.Namespace) -> int:
    import json

    from rigctl.benchmarks import drivers

    figures = drivers.run(seconds=args.seconds)
    print(json.dumps({"bench": "drivers", **figures}))
    return 0


def _register_bench() -> None:
    try:
        from rigctl.commands.bench import add_bench_command
        p = add_bench_command("drivers", "each driver against its emulator: time to arm a pulse, read speed")
    except (ImportError, RuntimeError):  # no bench group in this build
        return
    from rigctl.commands.bench import BENCH_SECONDS
    p.add_argument("--seconds", type=BENCH_SECONDS, default=10.0,
                   help="seconds of 64-channel data to read (0.1 to 600; default 10)")
    p.set_defaults(func=_bench)


def register(sub) -> None:
    _register_bench()
    p = sub.add_parser(
        "emulate", help="run a device emulator (pulsepal, rhx, openephys, maxlab) wired to a simulated culture",
        description="Start one device emulator on its own and print where to connect (the pty path, or host "
                    "and ports). Data-serving emulators (rhx, openephys, maxlab) run as fast as the client reads unless "
                    "--realtime; the Pulse Pal serves no data, so its culture always runs on the wall clock.")
    p.add_argument("device", choices=DEVICES)
    p.add_argument("--seed", type=seed, default=0, help="seed of the simulated culture (default 0)")
    p.add_argument("--realtime", action="store_true", help="pace data to the wall clock")
    p.add_argument("--drug", choices=DRUGS, default="none", help="simulated culture condition (default: none)")
    p.add_argument("--sample-rate-hz", type=sample_rate_hz, default=None, dest="sample_rate_hz",
                   help="sample rate of the simulated culture (1000 to 100000 Hz; default 25000; maxlab: 20000)")
    p.add_argument("--wells", type=int, choices=(1, 6), default=1,
                   help="maxlab: 1 (MaxOne) or 6 (MaxTwo) wells of 1024 channels in each frame (default 1)")
    p.add_argument("--mode", choices=("voltage",), default="voltage",
                   help="rhx/openephys/maxlab: what the culture serves (voltage traces)")
    p.add_argument("--outputs", type=_parse_outputs, default=_parse_outputs("1:0,2:2,3:4,4:6"),
                   help="pulsepal: output-to-electrode wiring, e.g. 1:0,2:2+3 (default 1:0,2:2,3:4,4:6)")
    p.add_argument("--host", default="127.0.0.1", help="rhx/openephys/maxlab: address to listen on (default loopback)")
    p.add_argument("--port", type=port_number, default=None, help="rhx: command port (default 5000); openephys: "
                                                                   "HTTP port (default 37497); maxlab: command port "
                                                                   "(default 7215, stream 7204; with --port the "
                                                                   "stream takes a free port); 0 = any free port")
    p.add_argument("--duration-s", type=finite_float_in(0.0, MAX_DURATION_S, lo_open=True), default=None,
                   dest="duration_s", help="stop after this many seconds (> 0, at most 30 days; default: until Ctrl-C)")
    p.set_defaults(func=_main)
