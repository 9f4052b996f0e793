"""`rigctl dashboard`: a Bokeh server page of a live run (figures from rigctl.live_view).

Bokeh serves its own JavaScript from the same server (no CDN: rig PCs are often offline). Bound to 127.0.0.1
by default; bound elsewhere, the page needs a random token in its URL (every document is built through
`_document`, which checks it). Pause/resume/abort buttons appear only when the dashboard holds a control key
(it is then a control client of the run, like `rigctl control`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from rigctl.errors import RigctlError
from rigctl.live_view import RASTER_S, LiveState

REFRESH_MS = 500


class DashboardError(RigctlError):
    """The dashboard cannot start (missing library, port in use)."""


def require_bokeh():
    try:
        import bokeh  # noqa: F401
    except ImportError:
        raise DashboardError("rigctl dashboard needs Bokeh: pip install 'rigctl[live]'") from None


@dataclass
class DashboardConfig:
    address: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    token: str | None = None  # required in the URL when bound beyond loopback
    control: Callable[[str], dict[str, Any]] | None = None  # cmd -> reply; None: no buttons


def _document(doc, make_feed, config: DashboardConfig) -> None:
    from bokeh.models import Div
    if config.token is not None:
        args = doc.session_context.request.arguments if doc.session_context else {}
        given = (args.get("token") or [b""])[0].decode("ascii", "replace")
        if not secrets.compare_digest(given, config.token):
            doc.add_root(Div(text="forbidden: this dashboard needs the token of its URL", name="forbidden"))
            return
    state = LiveState()
    feed = make_feed()
    feed.start(state)
    view = _View(state, config)
    doc.add_root(view.layout)
    doc.title = "rigctl dashboard"

    def refresh() -> None:
        feed.poll(state)
        view.update()
    refresh()
    doc.add_periodic_callback(refresh, REFRESH_MS)


class _View:
    """The page: progress, raster, MEA grid, per-session figures, free energy, events; optional buttons."""

    def __init__(self, state: LiveState, config: DashboardConfig):
        from bokeh.layouts import column, row
        from bokeh.models import (Button, ColorBar, ColumnDataSource, Div, LinearAxis, LinearColorMapper,
                                  Range1d)
        from bokeh.palettes import Viridis256
        from bokeh.plotting import figure

        self.state = state
        self.progress = Div(text="", name="progress", styles={"font-size": "16px", "font-weight": "bold"})
        self.notes = Div(text="", name="notes", width=900)
        self.raster_src = ColumnDataSource({"t": [], "ch": []}, name="raster")
        raster = figure(title=f"spikes, last {RASTER_S:g} s", height=260, width=560, x_axis_label="rig time (s)",
                        y_axis_label="electrode", name="raster_fig")
        raster.scatter("t", "ch", source=self.raster_src, size=2, color="black")
        self.grid_src = ColumnDataSource({"x": [], "y": [], "count": [], "name": [], "w": []}, name="grid")
        self.mapper = LinearColorMapper(palette=Viridis256, low=0, high=1)
        grid = figure(title="evoked spikes per trial (MEA)", height=320, width=360,
                      match_aspect=True, name="grid_fig", x_axis_label="x (µm)", y_axis_label="y (µm)",
                      tooltips=[("electrode", "@name"), ("evoked/trial", "@count{0.00}")])
        grid.rect("x", "y", width="w", height="w", source=self.grid_src,
                  fill_color={"field": "count", "transform": self.mapper}, line_color="white")
        grid.add_layout(ColorBar(color_mapper=self.mapper, width=8), "right")
        grid.y_range.flipped = True
        self.session_src = ColumnDataSource({"session": [], "evoked": []}, name="sessions")
        self.sep_src = ColumnDataSource({"session": [], "separation": []}, name="separation")
        sess = figure(title="per session: evoked count (left), ensemble separation (right)", height=260,
                      width=560, x_axis_label="session", y_axis_label="spikes / electrode / trial",
                      name="session_fig")
        sess.line("session", "evoked", source=self.session_src, color="steelblue", line_width=2)
        sess.scatter("session", "evoked", source=self.session_src, color="steelblue", size=5)
        sess.extra_y_ranges = {"sep": Range1d(-0.2, 0.6)}
        sess.add_layout(LinearAxis(y_range_name="sep", axis_label="separation"), "right")
        sess.line("session", "separation", source=self.sep_src, y_range_name="sep", color="firebrick",
                  line_width=2)
        self.fe_src = ColumnDataSource({"session": [], "L": [], "x1": [], "x2": [], "color": []},
                                       name="free_energy")
        self.pred_src = ColumnDataSource({"session": [], "xp1": [], "xp2": []}, name="predictions")
        fe = figure(title="free energy L (orange: predicted)", height=260, width=360,
                    x_axis_label="session", y_axis_label="L", name="fe_fig")
        fe.line("session", "L", source=self.fe_src, color="gray")
        fe.scatter("session", "L", source=self.fe_src, color="color", size=6)
        xs = figure(title="x: observed (line), predicted (◆)", height=260, width=360,
                    x_axis_label="session", y_axis_label="x", name="x_fig")
        for key, pkey, colour in (("x1", "xp1", "navy"), ("x2", "xp2", "darkorange")):
            xs.line("session", key, source=self.fe_src, color=colour, legend_label=f"ensemble {key[1]}")
            xs.scatter("session", pkey, source=self.pred_src, color=colour, size=6, marker="diamond")
        xs.legend.location = "bottom_right"
        parts: list[Any] = [self.progress]
        if config.control is not None:
            self.reply = Div(text="", name="control_reply")
            buttons = []
            for cmd, kind in (("pause", "warning"), ("resume", "success"), ("abort", "danger")):
                b = Button(label=cmd, button_type=kind, name=f"{cmd}_button", width=90)
                b.on_click(lambda c=cmd: self._send(config.control, c))
                buttons.append(b)
            parts.append(row(*buttons, self.reply))
        parts += [row(raster, grid), row(sess, fe, xs), self.notes]
        self.layout = column(*parts, name="dashboard")

    def _send(self, control: Callable[[str], dict[str, Any]], cmd: str) -> None:
        try:
            reply = control(cmd)
            text = reply.get("message") or reply.get("error") or str(reply)
        except RigctlError as exc:
            text = str(exc)
        self.reply.text = f"{cmd}: {text}"

    def update(self) -> None:
        s = self.state
        self.progress.text = s.progress_text()
        if s.spikes:
            arr = np.array(s.spikes, dtype=np.int64)
            self.raster_src.data = {"t": arr[:, 0] / s.sample_rate_hz, "ch": arr[:, 1]}
        if s.electrode_counts is not None and s.trials_done:
            pos = s.grid_positions()
            per_trial = s.electrode_counts / max(s.trials_done, 1)
            pitch = float(np.min(np.diff(np.unique(pos[:, 0])))) if len(np.unique(pos[:, 0])) > 1 else 1.0
            self.grid_src.data = {"x": pos[:, 0], "y": pos[:, 1], "count": per_trial,
                                  "name": [str(i + 1) for i in range(len(pos))], "w": [0.9 * pitch] * len(pos)}
            self.mapper.high = float(max(per_trial.max(), 1e-6))
        sessions, evoked = s.evoked_by_session()
        self.session_src.data = {"session": sessions, "evoked": evoked}
        sep = sorted(s.separation.items())
        self.sep_src.data = {"session": [k for k, _ in sep], "separation": [v for _, v in sep]}
        fe = [(k, r) for k, r in sorted(s.free_energy.items()) if r.get("status") == "active" and "L" in r]
        self.fe_src.data = {"session": [k for k, _ in fe], "L": [r["L"] for _, r in fe],
                            "x1": [r["x_mean"][0] for _, r in fe], "x2": [r["x_mean"][1] for _, r in fe],
                            "color": ["darkorange" if r.get("predicted") else "gray" for _, r in fe]}
        pr = [(k, r) for k, r in sorted(s.predictions.items()) if r.get("x_pred_mean") and
              r["x_pred_mean"][0] is not None]
        self.pred_src.data = {"session": [k for k, _ in pr], "xp1": [r["x_pred_mean"][0] for _, r in pr],
                              "xp2": [r["x_pred_mean"][1] for _, r in pr]}
        lines = list(s.notes) + [f"fault: {f}" for f in s.faults[-3:]]
        self.notes.text = "<br>".join(lines) if lines else "no pauses, marks or faults"


def serve(make_feed, config: DashboardConfig, on_ready: Callable[[str], None]) -> None:
    """Serve until interrupted; `on_ready(url)` once the port is bound."""
    require_bokeh()
    from bokeh.application import Application
    from bokeh.application.handlers.function import FunctionHandler
    from bokeh.server.server import BaseServer
    from bokeh.server.tornado import BokehTornado
    from bokeh.server.util import bind_sockets
    from tornado.httpserver import HTTPServer
    from tornado.ioloop import IOLoop

    app = Application(FunctionHandler(lambda doc: _document(doc, make_feed, config)))
    try:
        sockets, port = bind_sockets(config.address, config.port)
    except OSError as exc:
        raise DashboardError(f"cannot listen on {config.address}:{config.port} ({exc.strerror or exc})") from None
    # loopback: pages of this very address only (a web site open in the same browser cannot press the buttons);
    # elsewhere: the host the user browses to is not known here, the token gates every document instead
    origins = [f"127.0.0.1:{port}", f"localhost:{port}"] if config.token is None else ["*"]
    tornado_app = BokehTornado({"/": app}, extra_websocket_origins=origins)
    http = HTTPServer(tornado_app)
    http.add_sockets(sockets)
    server = BaseServer(IOLoop.current(), tornado_app, http)
    server.start()
    host = config.address if ":" not in config.address else f"[{config.address}]"
    url = f"http://{host}:{port}/" + (f"?token={config.token}" if config.token is not None else "")
    on_ready(url)
    try:
        server.io_loop.start()
    finally:
        server.stop()
