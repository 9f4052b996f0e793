"""Intan RHX (RHS stim/record controller) TCP interface on loopback, serving a simulated culture.

Reimplements what a remote-control client sees of RHX v3.4.0 (../shared/spec/devices.md section 2):
- command port: one client; Latin-1 text split on `;` per TCP read, words split on spaces, case-insensitive;
  `get` -> `Return: <Name> <value>` with no terminator, successful `set`/`execute` silent, errors as
  RHX's sentences; `set runmode run` blocks the rest of its batch until the run stops; when the client
  goes away the port stops listening until the operator presses Connect (`press_connect`);
- waveform port: listens after `execute ConnectTCPWaveformDataOutput`, one client; 128-frame blocks
  (magic 0x2ef07a08, uint32 timestamp + uint16 per enabled output in RHX channel order, bands
  WIDE then STIM), `TCPNumberDataBlocksPerWrite` blocks per write;
- stimulation: per-channel parameters, `UploadStimParameters`, keypress sources F1-F8 and
  `ManualStimTriggerPulse Fk`: every enabled channel whose uploaded source is that key pulses
  `PostTriggerDelayMicroseconds` after the sample the controller is at; pulses reach the culture
  (`backend.schedule`) before the read that covers them, and show in the STIM band.
Not emulated (refused with an error, never faked): LOW/HIGH/DC/SPK outputs, recording to disk, the
spike port, analog/digital I/O, impedance measurement.

Time: in accelerated mode (default) the controller produces data as fast as the client takes it; since
that leaves no wall clock, `get CurrentTimestamp` holds the controller's clock until the client's next
command batch (at most `hold_s`), so a client can aim a post-trigger delay at an exact sample.
`realtime=True` paces production to the wall clock and holds nothing. With `clock` (an in-process client's
read position, as a rig file's `host: emulate` gives), an accelerated controller also stays within `lead_s`
(at least two writes) of what the client has read, as the MaxLab emulator does.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from rigctl.drivers import _rhx_wire as rw
from rigctl.types import BiphasicPulse, StimCommand

BOOL_ITEMS = {"stimenabled", "enableampsettle", "maintainampsettle", "enablechargerecovery", "enabled",
              "tcpdataoutputenabled", "tcpdataoutputenabledstim", "tcpdataoutputenabledlow",
              "tcpdataoutputenabledhigh", "tcpdataoutputenabledspike", "tcpdataoutputenableddc"}
ENUM_ITEMS = {
    "shape": ("biphasic", "biphasicwithinterphasedelay", "triphasic"),
    "polarity": ("negativefirst", "positivefirst"),
    "source": tuple([f"digitalin{i:02d}" for i in range(1, 17)] + [f"analogin{i:02d}" for i in range(1, 9)]
                    + [f"keypressf{i}" for i in range(1, 9)]),
    "triggeredgeorlevel": ("edge", "level"),
    "triggerhighorlow": ("high", "low"),
    "pulseortrain": ("singlepulse", "pulsetrain"),
}
NUMBER_ITEMS = {  # name -> (lo, hi, integer)
    "numberofstimpulses": (0, 256, True),
    "firstphasedurationmicroseconds": (0, 5000, False), "secondphasedurationmicroseconds": (0, 5000, False),
    "interphasedelaymicroseconds": (0, 5000, False),
    "firstphaseamplitudemicroamps": (0, 2550, False), "secondphaseamplitudemicroamps": (0, 2550, False),
    "posttriggerdelaymicroseconds": (0, 500000, False), "pulsetrainperiodmicroseconds": (0, 1000000, False),
    "refractoryperiodmicroseconds": (0, 1000000, False),
    "prestimampsettlemicroseconds": (0, 500000, False), "poststimampsettlemicroseconds": (0, 500000, False),
    "poststimchargerecovonmicroseconds": (0, 1000000, False), "poststimchargerecovoffmicroseconds": (0, 1000000, False),
    "spikethresholdmicrovolts": (-5000, 5000, True),
}
CANONICAL = {  # lower -> RHX spelling, for `Return:` lines
    "stimenabled": "StimEnabled", "shape": "Shape", "polarity": "Polarity", "source": "Source",
    "triggeredgeorlevel": "TriggerEdgeOrLevel", "triggerhighorlow": "TriggerHighOrLow", "pulseortrain": "PulseOrTrain",
    "numberofstimpulses": "NumberOfStimPulses", "firstphasedurationmicroseconds": "FirstPhaseDurationMicroseconds",
    "secondphasedurationmicroseconds": "SecondPhaseDurationMicroseconds",
    "interphasedelaymicroseconds": "InterphaseDelayMicroseconds",
    "firstphaseamplitudemicroamps": "FirstPhaseAmplitudeMicroAmps",
    "secondphaseamplitudemicroamps": "SecondPhaseAmplitudeMicroAmps",
    "posttriggerdelaymicroseconds": "PostTriggerDelayMicroseconds",
    "pulsetrainperiodmicroseconds": "PulseTrainPeriodMicroseconds",
    "refractoryperiodmicroseconds": "RefractoryPeriodMicroseconds",
    "prestimampsettlemicroseconds": "PreStimAmpSettleMicroseconds",
    "poststimampsettlemicroseconds": "PostStimAmpSettleMicroseconds",
    "poststimchargerecovonmicroseconds": "PostStimChargeRecovOnMicroseconds",
    "poststimchargerecovoffmicroseconds": "PostStimChargeRecovOffMicroseconds",
    "enableampsettle": "EnableAmpSettle", "maintainampsettle": "MaintainAmpSettle",
    "enablechargerecovery": "EnableChargeRecovery", "enabled": "Enabled",
    "tcpdataoutputenabled": "TCPDataOutputEnabled", "tcpdataoutputenabledstim": "TCPDataOutputEnabledStim",
    "tcpdataoutputenabledlow": "TCPDataOutputEnabledLow", "tcpdataoutputenabledhigh": "TCPDataOutputEnabledHigh",
    "tcpdataoutputenabledspike": "TCPDataOutputEnabledSpike", "tcpdataoutputenableddc": "TCPDataOutputEnabledDC",
    "spikethresholdmicrovolts": "SpikeThresholdMicroVolts", "customchannelname": "CustomChannelName",
}
ENUM_SPELLING = {v.lower(): v for v in (
    "Biphasic", "BiphasicWithInterphaseDelay", "Triphasic", "NegativeFirst", "PositiveFirst", "Edge", "Level",
    "High", "Low", "SinglePulse", "PulseTrain", *[f"DigitalIn{i:02d}" for i in range(1, 17)],
    *[f"AnalogIn{i:02d}" for i in range(1, 9)], *[f"KeyPressF{i}" for i in range(1, 9)])}
NOT_EMULATED = {"tcpdataoutputenabledlow", "tcpdataoutputenabledhigh", "tcpdataoutputenabledspike",
                "tcpdataoutputenableddc"}


def default_channel_state() -> dict:
    return {"stimenabled": False, "shape": "biphasic", "polarity": "negativefirst", "source": "digitalin01",
            "triggeredgeorlevel": "edge", "triggerhighorlow": "high", "pulseortrain": "singlepulse",
            "numberofstimpulses": 2, "firstphasedurationmicroseconds": 100.0, "secondphasedurationmicroseconds": 100.0,
            "interphasedelaymicroseconds": 100.0, "firstphaseamplitudemicroamps": 0.0,
            "secondphaseamplitudemicroamps": 0.0, "posttriggerdelaymicroseconds": 0.0,
            "pulsetrainperiodmicroseconds": 10000.0, "refractoryperiodmicroseconds": 1000.0,
            "prestimampsettlemicroseconds": 0.0, "poststimampsettlemicroseconds": 1000.0,
            "poststimchargerecovonmicroseconds": 0.0, "poststimchargerecovoffmicroseconds": 0.0,
            "enableampsettle": True, "maintainampsettle": False, "enablechargerecovery": False, "enabled": True,
            "tcpdataoutputenabled": False, "tcpdataoutputenabledstim": False, "tcpdataoutputenabledlow": False,
            "tcpdataoutputenabledhigh": False, "tcpdataoutputenabledspike": False, "tcpdataoutputenableddc": False,
            "spikethresholdmicrovolts": -70, "customchannelname": ""}


@dataclass
class RhxFaults:
    """Fault injection on the controller side."""

    hung: bool = False  # stops answering commands and stops sending data; sockets stay open
    garbage_in_next_write: bytes = b""  # bytes inserted before the next waveform write
    cut_next_write_at: int | None = None  # send only this many bytes of the next write, then drop the data socket
    # the reply to the next command batch containing this text (case-insensitive) leaves `reply_delay_s`
    # late, while the batch itself takes effect at once and later batches are served meanwhile (a reply
    # stuck on the way: the controller has done what it was told, the client cannot know it)
    delay_reply_to: str | None = None
    reply_delay_s: float = 0.0
    # (batch text, reply) -> the bytes sent instead, for every batch (hostile replies for the fuzzer)
    rewrite_reply: Callable[[str, str], bytes] | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class _Pulse:
    channel: int  # backend channel index
    onset: int
    pulse: BiphasicPulse
    steps1: int
    steps2: int
    negative_first: bool


class RHXEmulator:
    """An RHS controller under RHX. `channel_names[i]` is the native name of the culture's electrode i."""

    def __init__(self, backend, *, channel_names: list[str] | None = None, step_uA: float = 1.0,
                 host: str = "127.0.0.1", command_port: int = 0, waveform_port: int = 0, realtime: bool = False,
                 hold_s: float = 1.0, horizon_s: float = 0.05, version: str = "3.4.0",
                 clock: Callable[[], int | None] | None = None, lead_s: float = 0.02):
        if step_uA not in rw.STEP_SIZES_UA:
            raise ValueError(f"step_uA={step_uA}; allowed: {rw.STEP_SIZES_UA}")
        self.backend = backend
        self.fs = float(backend.sample_rate_hz)
        names = channel_names or rw.default_channel_names(backend.n_channels)
        if len(names) != backend.n_channels:
            raise ValueError(f"{len(names)} channel names for {backend.n_channels} electrodes")
        self.names = [n.upper() for n in names]
        self.index = {n.lower(): i for i, n in enumerate(self.names)}
        self.order = sorted(range(len(self.names)), key=lambda i: rw.channel_order_key(self.names[i]))
        self.step_uA = step_uA
        self.host = host
        self.realtime = realtime
        self.hold_s = hold_s
        self.clock = clock  # in-process client: the timestamp it has read up to (None before its first read)
        self.lead = int(round(lead_s * self.fs))
        self.horizon = int(round(horizon_s * self.fs))
        self.version = version
        self.faults = RhxFaults()
        self.lock = threading.RLock()
        self._reply_lock = threading.Lock()
        self.channels = {n.lower(): default_channel_state() for n in self.names}
        self.uploaded = {n.lower(): default_channel_state() for n in self.names}
        self.blocks_per_write = 10
        self.run_mode = "stop"
        self.timestamp = 0  # next frame's timestamp (the controller's clock)
        self.pending: list[_Pulse] = []  # triggered, not yet handed to the culture
        self.active: list[_Pulse] = []  # handed to the culture, still visible in the STIM band
        self.delivered: list[StimCommand] = []
        self.commands: list[str] = []  # every command received (tests, `rigctl emulate` logs)
        self.errors: list[str] = []
        self._deferred: list[str] = []
        self._hold_until = 0.0
        self._stop = threading.Event()
        self._run_stop = threading.Event()
        self._run_stop.set()
        self._cmd_listener = self._listen(command_port)
        self.command_port = self._cmd_listener.getsockname()[1]
        self._wave_listener: socket.socket | None = None
        self._wave_port_wanted = waveform_port
        self.waveform_port = waveform_port or 5001
        self._cmd_client: socket.socket | None = None
        self._wave_client: socket.socket | None = None
        self._cmd_thread = threading.Thread(target=self._serve_commands, name="rhx-commands", daemon=True)
        self._data_thread: threading.Thread | None = None
        self._buffer = np.empty((0, backend.n_channels), np.int16)  # culture samples read, not yet framed

    # ---- sockets ---------------------------------------------------------------------------------------
    def _listen(self, port: int) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, port))
        s.listen(1)
        return s

    def start(self) -> "RHXEmulator":
        self._cmd_thread.start()
        return self

    @property
    def command_status(self) -> str:
        if self._cmd_client is not None:
            return "Connected"
        return "Pending" if self._cmd_listener is not None else "Disconnected"

    def press_connect(self) -> None:
        """The operator presses Connect on the Remote TCP Control tab: the command port listens again."""
        with self.lock:
            if self._cmd_listener is None:
                self._cmd_listener = self._listen(self.command_port)

    def close(self) -> None:
        self._stop.set()
        self._run_stop.set()
        for s in (self._cmd_client, self._wave_client, self._cmd_listener, self._wave_listener):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        self._cmd_thread.join(timeout=2.0)
        if self._data_thread is not None:
            self._data_thread.join(timeout=2.0)

    def drop_command_client(self) -> None:
        """The connection breaks (e.g. RHX's side closes it): the port then stops listening."""
        with self.lock:
            c, self._cmd_client = self._cmd_client, None
        if c is not None:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    # ---- command port --------------------------------------------------------------------------------
    def _serve_commands(self) -> None:
        while not self._stop.is_set():
            listener = self._cmd_listener
            if listener is None:
                time.sleep(0.01)
                continue
            try:
                listener.settimeout(0.1)
                client, _ = listener.accept()
            except (socket.timeout, OSError):  # timeout, or closed under us by close()
                continue
            with self.lock:
                self._cmd_client = client
                listener.close()  # one client: the server stops listening once it has one
                self._cmd_listener = None
            try:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                client.settimeout(0.1)
            except OSError:
                continue
            while not self._stop.is_set() and self._cmd_client is client:
                try:
                    data = client.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    break
                if not data:
                    break
                if self.faults.hung:
                    continue
                text = data.decode("latin-1")
                with self.lock:  # a batch is atomic with respect to the controller's clock
                    self._hold_until = 0.0  # a new batch: the held clock runs again after it
                    reply = self._batch(text)
                out = reply.encode("latin-1")
                f = self.faults
                if f.rewrite_reply is not None:
                    out = f.rewrite_reply(text, reply)
                if f.delay_reply_to is not None and f.delay_reply_to.lower() in text.lower():
                    f.delay_reply_to = None
                    late = threading.Timer(f.reply_delay_s, self._reply, (client, out))
                    late.daemon = True
                    late.start()
                    continue
                if out and not self._reply(client, out):
                    break
            with self.lock:
                if self._cmd_client is client:
                    self._cmd_client = None
            try:
                client.close()
            except OSError:
                pass
            # back to Disconnected: nobody listens until the operator presses Connect

    def _reply(self, client: socket.socket, data: bytes) -> bool:
        """One write per reply (a delayed reply may come from a timer thread); False if the client is gone."""
        with self._reply_lock:
            try:
                client.sendall(data)
                return True
            except OSError:
                return False

    def _batch(self, text: str) -> str:
        out: list[str] = []
        commands = text.split(";")
        for i, command in enumerate(commands):
            if not command.strip() and i == len(commands) - 1:
                continue
            if self.run_mode != "stop" and self._deferred is not None and self._running_batch:
                self._deferred.append(command)
                continue
            out.append(self._command(i, command))
        self._running_batch = False
        return "".join(out)

    _running_batch = False

    def _command(self, i: int, command: str) -> str:
        self.commands.append(command)
        words = command.split(" ")
        verb = words[0].lower()
        if verb == "set":
            if len(words) < 3:
                return f"Error - Command {i + 1}: Set commands require a parameter and a value"
            return self._set(words[1], words[2])
        if verb == "get":
            if len(words) < 2:
                return f"Error - Command {i + 1}: Get commands require a parameter"
            return self._get(words[1])
        if verb == "execute":
            if len(words) < 2:
                return f"Error - Command {i + 1}: Execute commands require an action"
            return self._execute(words[1], words[2] if len(words) > 2 else None)
        return f"Error - Command {i + 1}: Unrecognized command"

    def _split_item(self, parameter: str) -> tuple[str | None, str]:
        p = parameter.lower()
        if "." in p:
            ch, item = p.split(".", 1)
            return ch, item
        return None, p

    def _get(self, parameter: str) -> str:
        ch, item = self._split_item(parameter)
        with self.lock:
            if ch is not None:
                if ch not in self.channels:
                    return "Unrecognized parameter"
                if item not in self.channels[ch]:
                    return "Unrecognized parameter"
                return f"Return: {CANONICAL[item]} {self._show(self.channels[ch][item])}"
            if item == "type":
                return "Return: Type ControllerStimRecord"
            if item == "sampleratehertz":
                return f"Return: SampleRateHertz {rw.format_double(self.fs)}"
            if item == "stimstepsizemicroamps":
                return f"Return: StimStepSizeMicroAmps {rw.format_double(self.step_uA)}"
            if item == "runmode":
                return f"Return: RunMode {self.run_mode.capitalize()}"
            if item == "tcpnumberdatablocksperwrite":
                return f"Return: TCPNumberDataBlocksPerWrite {self.blocks_per_write}"
            if item == "uploadinprogress":
                return "Return: UploadInProgress False"
            if item == "version":
                return f"Return: Version {self.version}"
            if item == "currenttimestamp":
                if self.run_mode == "stop":
                    return "Return: -1"
                if not self.realtime:
                    self._hold_until = time.monotonic() + self.hold_s  # hold until the next batch
                return f"Return: {self.timestamp - 1}"
            if item == "tcpwaveformdataoutputconnectionstatus":
                status = "Connected" if self._wave_client else ("Pending" if self._wave_listener else "Disconnected")
                return f"Return: TCPWaveformDataOutputConnectionStatus {status}"
            if item == "tcpwaveformdataoutputport":
                return f"Return: TCPWaveformDataOutputPort {self.waveform_port}"
        return "Unrecognized parameter"

    @staticmethod
    def _show(value) -> str:
        if isinstance(value, bool):
            return "True" if value else "False"
        if isinstance(value, float):
            return rw.format_double(value)
        if isinstance(value, str):
            return ENUM_SPELLING.get(value, value)
        return str(value)

    def _set(self, parameter: str, value: str) -> str:
        ch, item = self._split_item(parameter)
        v = value.lower()
        with self.lock:
            if ch is None:
                if item == "runmode":
                    return self._set_run_mode(v)
                if item == "tcpnumberdatablocksperwrite":
                    if self.run_mode != "stop":
                        return "TCPNumberDataBlocksPerWrite cannot be set while controller is running."
                    try:
                        n = int(v)
                    except ValueError:
                        n = 0
                    if not 1 <= n <= 100:
                        return "Invalid value for TCPNumberDataBlocksPerWrite command. Acceptable: [ 1 , 100 ]"
                    self.blocks_per_write = n
                    return ""
                if item in ("sampleratehertz", "stimstepsizemicroamps", "type"):
                    return f"{CANONICAL.get(item, parameter)} is read-only"
                return "Unrecognized parameter"
            if ch not in self.channels or item not in self.channels[ch]:
                return "Unrecognized parameter"
            name = CANONICAL[item]
            if item in NOT_EMULATED and v == "true":
                return f"{name} is not emulated by rigctl's RHX emulator"
            if item in BOOL_ITEMS:
                if v not in ("true", "false"):
                    return f"Invalid value for {name} command. Acceptable: [ True , False ]"
                if item.startswith("tcpdataoutput") and self.run_mode != "stop":
                    return f"{name} cannot be set while the board is running"
                self.channels[ch][item] = v == "true"
            elif item in ENUM_ITEMS:
                if v not in ENUM_ITEMS[item]:
                    return f"Invalid value for {name} command"
                self.channels[ch][item] = v
            elif item in NUMBER_ITEMS:
                lo, hi, integer = NUMBER_ITEMS[item]
                try:
                    x = float(v)
                except ValueError:
                    x = float("nan")
                if not (lo <= x <= hi) or (integer and x != int(x)):
                    return f"Invalid value for {name} command. Acceptable: [ {lo} , {hi} ]"
                self.channels[ch][item] = int(x) if integer else x
            else:
                self.channels[ch][item] = v
        return ""

    def _set_run_mode(self, v: str) -> str:
        if v == "stop":
            return self._stop_run()
        if v in ("record", "trigger"):
            return "Recording to disk is not emulated by rigctl's RHX emulator"
        if v != "run":
            return "Invalid value for SetRunMode command"
        if self.run_mode != "stop":
            return "Board must be stopped in order to start running"
        self.run_mode = "run"
        self.timestamp = int(self.backend.now_sample)
        self._buffer = np.empty((0, self.backend.n_channels), np.int16)
        self._run_stop = threading.Event()  # one per run: a finishing producer never sees the next run's
        self._running_batch = True  # the rest of this batch waits for the run to stop, as in RHX
        self._deferred = []
        self.backend.start()
        self._data_thread = threading.Thread(target=self._produce, args=(self._run_stop,), name="rhx-data",
                                             daemon=True)
        self._data_thread.start()
        return ""

    def _stop_run(self) -> str:
        if self.run_mode == "stop":
            return ""
        self._run_stop.set()  # the producer checks it under the lock before every block
        self.run_mode = "stop"
        self.pending.clear()
        self.active.clear()
        deferred, self._deferred = self._deferred, []
        # commands that waited behind `set runmode run` run now, and their replies go out now
        return "".join(self._command(0, command) for command in deferred)

    def _execute(self, action: str, arg: str | None) -> str:
        a = action.lower()
        with self.lock:
            if a == "clearalldataoutputs":
                if self.run_mode != "stop":
                    return "ClearAllDataOutputs cannot be executed while the board is running"
                for state in self.channels.values():
                    for band in rw.BANDS:
                        state["tcpdataoutputenabled" + band] = False
                return ""
            if a == "connecttcpwaveformdataoutput":
                if self._wave_listener is None and self._wave_client is None:
                    self._wave_listener = self._listen(self._wave_port_wanted)
                    self.waveform_port = self._wave_listener.getsockname()[1]
                    threading.Thread(target=self._accept_waveform, name="rhx-wave-accept", daemon=True).start()
                return ""
            if a == "disconnecttcpwaveformdataoutput":
                self._drop_waveform()
                return ""
            if a == "uploadstimparameters":
                targets = [arg.lower()] if arg else list(self.channels)
                for t in targets:
                    if t not in self.channels:
                        return "Unrecognized channel"
                    self.uploaded[t] = dict(self.channels[t])
                    if not self.uploaded[t]["stimenabled"]:  # [assumption] disabling drops a latched trigger
                        ch = self.index[t]
                        self.pending = [p for p in self.pending if p.channel != ch]
                return ""
            if a in ("manualstimtriggerpulse", "manualstimtriggeron"):
                if arg is None or arg.upper() not in rw.KEYS:
                    return f"Invalid value for {action} command"
                self._trigger("keypress" + arg.lower())
                return ""
            if a == "manualstimtriggeroff":
                return ""
        return "Unrecognized action"

    # ---- stimulation -----------------------------------------------------------------------------------------
    def _trigger(self, source: str) -> None:
        if self.run_mode == "stop":
            return
        now = self.timestamp
        for name, p in self.uploaded.items():
            if not p["stimenabled"] or p["source"] != source:
                continue
            ch = self.index[name]
            if any(x.channel == ch for x in self.pending):
                continue  # still in its post-trigger delay: RHS ignores the new trigger
            steps1 = min(rw.MAX_STEPS, int(round(p["firstphaseamplitudemicroamps"] / self.step_uA)))
            steps2 = min(rw.MAX_STEPS, int(round(p["secondphaseamplitudemicroamps"] / self.step_uA)))
            neg = p["polarity"] == "negativefirst"
            sign = -1.0 if neg else 1.0
            ipi = p["interphasedelaymicroseconds"] if p["shape"] == "biphasicwithinterphasedelay" else 0.0
            pulse = BiphasicPulse(sign * steps1 * self.step_uA, self._us(p["firstphasedurationmicroseconds"]),
                                  -sign * steps2 * self.step_uA, self._us(p["secondphasedurationmicroseconds"]),
                                  self._us(ipi), "uA")
            onset = now + int(round(p["posttriggerdelaymicroseconds"] * self.fs / 1e6))
            n = p["numberofstimpulses"] if p["pulseortrain"] == "pulsetrain" else 1
            period = int(round(p["pulsetrainperiodmicroseconds"] * self.fs / 1e6))
            for k in range(max(1, n)):
                self.pending.append(_Pulse(ch, onset + k * period, pulse, steps1, steps2, neg))

    def _us(self, us: float) -> float:
        """Durations are whole sample periods on the controller."""
        return round(us * self.fs / 1e6) * 1e6 / self.fs

    def _deliver(self, until: int) -> None:
        due = sorted((p for p in self.pending if p.onset < until), key=lambda p: p.onset)
        if not due:
            return
        self.pending = [p for p in self.pending if p.onset >= until]
        groups: dict[tuple[int, BiphasicPulse], list[int]] = {}
        for p in due:
            groups.setdefault((p.onset, p.pulse), []).append(p.channel)
            self.active.append(p)
        for (onset, pulse), chans in sorted(groups.items(), key=lambda kv: kv[0][0]):
            cmd = StimCommand(onset, tuple(sorted(chans)), pulse)
            self.delivered.append(cmd)
            try:
                self.backend.schedule(cmd)
            except Exception as exc:
                self.errors.append(f"culture refused pulse at sample {onset}: {exc}")

    # ---- waveform data -----------------------------------------------------------------------------------------
    def _accept_waveform(self) -> None:
        listener = self._wave_listener
        if listener is None:
            return
        while not self._stop.is_set() and self._wave_listener is listener:
            try:
                listener.settimeout(0.1)
                client, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:  # a send buffer of about two writes: little run-ahead of the client when accelerated
                n_words = max(1, len(self._outputs()))
                client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                  max(8192, 2 * self.blocks_per_write * rw.block_bytes(n_words)))
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                client.close()
                continue
            with self.lock:
                if self._wave_listener is not listener:  # disconnected meanwhile
                    client.close()
                    return
                self._wave_client = client
                self._wave_listener = None
            listener.close()
            return

    def _drop_waveform(self) -> None:
        for attr in ("_wave_client", "_wave_listener"):
            s = getattr(self, attr)
            setattr(self, attr, None)
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass

    def _outputs(self) -> list[tuple[int, str]]:
        """Enabled outputs in frame order: channels in RHX order, bands WIDE then STIM."""
        out = []
        for i in self.order:
            state = self.channels[self.names[i].lower()]
            for band in ("", "stim"):
                if state["tcpdataoutputenabled" + band]:
                    out.append((i, band))
        return out

    def _ahead_of_client(self, n_per_write: int) -> bool:
        """Accelerated with an in-process client: would the next write put the controller more than `lead`
        (at least two writes) ahead of what the client has read? Socket buffers would otherwise let the clock
        run hundreds of ms ahead while the client is busy, and a closed loop's pulses land in the past."""
        read_to = None if self.clock is None else self.clock()
        return read_to is not None and self.timestamp + n_per_write > read_to + max(self.lead, 2 * n_per_write)

    def _produce(self, stop: threading.Event) -> None:
        outputs = self._outputs()
        n_per_write = rw.FRAMES_PER_BLOCK * self.blocks_per_write
        wall0, first0 = time.monotonic(), self.timestamp
        scale = self.backend.uV_per_bit / rw.UV_PER_BIT
        while not stop.is_set():
            if self.faults.hung or self._wave_client is None or not outputs:
                if stop.wait(0.005):  # nobody to serve: an accelerated clock does not run
                    break
                wall0, first0 = time.monotonic(), self.timestamp
                continue
            if self.realtime:
                due = wall0 + (self.timestamp + n_per_write - first0) / self.fs
                if stop.wait(max(0.0, due - time.monotonic())):
                    break
            elif self._ahead_of_client(n_per_write):
                if stop.wait(0.0002):
                    break
                continue
            with self.lock:
                if stop.is_set():
                    break
                if time.monotonic() < self._hold_until:
                    payload = None  # the client is between `get CurrentTimestamp` and its trigger batch
                else:
                    payload = self._next_write(outputs, n_per_write, scale)
                    if payload is None:
                        stop.set()
                        break
            if payload is None:
                time.sleep(0.0005)
                continue
            self._send(payload)

    def _next_write(self, outputs, n_per_write: int, scale: float) -> bytes | None:
        """Frame the next `TCPNumberDataBlocksPerWrite` blocks (under the lock)."""
        while len(self._buffer) < n_per_write:
            chunk_len = int(getattr(self.backend, "chunk_samples", n_per_write))
            self._deliver(self.backend.now_sample + chunk_len + self.horizon)
            data = self.backend.read().samples
            if data.shape[1] != self.backend.n_channels:
                self.errors.append("the culture serves no voltage traces (events mode)")
                return None
            self._buffer = np.concatenate([self._buffer, data])
        samples = self._buffer[:n_per_write]
        self._buffer = self._buffer[n_per_write:]
        first = self.timestamp
        words = np.empty((n_per_write, len(outputs)), np.uint16)
        for j, (ch, band) in enumerate(outputs):
            if band == "":
                x = samples[:, ch].astype(np.float64) * scale if scale != 1.0 else samples[:, ch].astype(np.int32)
                words[:, j] = np.clip(np.rint(x) + rw.RAW_OFFSET, 0, 65535).astype(np.uint16)
            else:
                words[:, j] = self._stim_words(ch, first, n_per_write)
        self.timestamp += n_per_write
        self.active = [p for p in self.active if p.onset + self._pulse_len(p) > self.timestamp]
        return b"".join(rw.build_block(first + b * rw.FRAMES_PER_BLOCK,
                                       words[b * rw.FRAMES_PER_BLOCK:(b + 1) * rw.FRAMES_PER_BLOCK])
                        for b in range(self.blocks_per_write))

    def _pulse_len(self, p: _Pulse) -> int:
        return int(round(p.pulse.duration_us * self.fs / 1e6))

    def _stim_words(self, ch: int, first: int, n: int) -> np.ndarray:
        out = np.zeros(n, np.uint16)
        for p in self.active:
            if p.channel != ch:
                continue
            a = int(round(p.pulse.phase1_us * self.fs / 1e6))
            gap = int(round(p.pulse.interphase_us * self.fs / 1e6))
            b = int(round(p.pulse.phase2_us * self.fs / 1e6))
            for start, length, steps, neg in ((p.onset, a, p.steps1, p.negative_first),
                                              (p.onset + a + gap, b, p.steps2, not p.negative_first)):
                lo, hi = max(start, first), min(start + length, first + n)
                if lo < hi:
                    out[lo - first:hi - first] = rw.stim_word(steps, neg)
        return out

    def _send(self, payload: bytes) -> None:
        f = self.faults
        client = self._wave_client
        if client is None:
            return
        if f.garbage_in_next_write:
            payload = f.garbage_in_next_write + payload
            f.garbage_in_next_write = b""
        cut = f.cut_next_write_at
        try:
            if cut is not None:
                f.cut_next_write_at = None
                client.sendall(payload[:cut])
                self._drop_waveform()
                return
            client.sendall(payload)
        except OSError:
            with self.lock:
                self._drop_waveform()
