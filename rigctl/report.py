"""Run report: summary.json and PNG plots, computed from the stored trial table (the source of truth)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rigctl.errors import StoreError
from rigctl.export import load_run_info, load_run_trials
from rigctl.store import RunInfo, read_jsonl, read_records

#: run.json's `status` once the run has done all its trials; anything else (running, interrupted, failed) is not.
COMPLETE = "complete"


def session_response_stats(t: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Per session: trials, mean evoked spikes per trial (all electrodes), and per electrode the mean count
    given each source on and off. Selectivity index per electrode and source: (on - off) / (on + off)."""
    out = []
    for k in np.unique(t["session"]):
        m = t["session"] == k
        r, s = t["r"][m].astype(np.float64), t["s"][m]
        entry: dict[str, Any] = {"index": int(k), "trials": int(m.sum()),
                                 "mean_evoked_per_trial": round(float(r.sum(axis=1).mean()), 4),
                                 "mean_per_electrode": r.mean(axis=0).round(4).tolist(),
                                 "response_to_source": {}, "selectivity_index": {}}
        for j in range(s.shape[1]):
            on = r[s[:, j] == 1].mean(axis=0) if (s[:, j] == 1).any() else np.zeros(r.shape[1])
            off = r[s[:, j] == 0].mean(axis=0) if (s[:, j] == 0).any() else np.zeros(r.shape[1])
            denom = on + off
            idx = np.where(denom > 0, (on - off) / np.where(denom > 0, denom, 1.0), 0.0)
            entry["response_to_source"][f"s{j + 1}"] = {"on": on.round(4).tolist(), "off": off.round(4).tolist()}
            entry["selectivity_index"][f"s{j + 1}"] = idx.round(4).tolist()
        out.append(entry)
    return out


def ensemble_analysis(t: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """The paper's ensemble separation per session (spec §2.2-2.4), if the model package provides it."""
    try:
        from rigctl.model.ensembles import separation_by_session
    except ImportError:
        return None
    try:
        res = separation_by_session(t["s"], t["r"], t["session"], allow_empty=True)
    except Exception as exc:  # an empty ensemble is a finding, not a crash of the report
        return {"error": f"{type(exc).__name__}: {exc}"}
    sep = np.asarray(res.separation, dtype=float)
    n = len(sep)
    last = sep[max(0, n - 10):]
    states = ("11", "10", "01", "00")
    state_means = np.asarray(res.state_means, dtype=float)  # [ensemble, session, state]
    return {
        "g1": [int(e) for e in res.g1], "g2": [int(e) for e in res.g2],
        "empty": [bool(e) for e in res.empty],
        "note": "an empty ensemble contributes 0 to the separation (no electrode passed spec 2.2's rules)",
        "separation": [round(float(x), 5) for x in sep],
        "separation_last10": round(float(np.mean(last)), 5),
        "x_s1_on": np.round(res.x_s1_on, 5).tolist(), "x_s1_off": np.round(res.x_s1_off, 5).tolist(),
        "x_s2_on": np.round(res.x_s2_on, 5).tolist(), "x_s2_off": np.round(res.x_s2_off, 5).tolist(),
        "state_means": {f"ensemble{i + 1}": {st: np.round(state_means[i, :, j], 4).tolist()
                                             for j, st in enumerate(states)} for i in range(state_means.shape[0])},
    }


def _source_electrodes(run_dir: Path, n_sources: int) -> tuple | None:
    """Electrodes that stimulate for each source: the protocol's stim_groups in order (group 1 copies source 1)."""
    from rigctl.yamlcheck import load_located

    path = run_dir / "protocol.yaml"
    if not path.exists():
        return None
    groups = (load_located(path, error=StoreError).data or {}).get("stim_groups")
    if not isinstance(groups, dict) or len(groups) != n_sources:
        return None
    return tuple(np.asarray(list(g), np.int64) for g in groups.values())


def response_analysis(t: dict[str, np.ndarray], run_dir: Path,
                      ens: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """How the raw responses look (issue 16; rigctl.model.realism): gain, each ensemble's response to its
    source over the other state, its share of its source's stimulating electrodes, sizes, spontaneous count.
    `ens`: `ensemble_analysis`'s result, whose G1 and G2 are used rather than chosen again."""
    groups = _source_electrodes(run_dir, t["s"].shape[1])
    if groups is None or t["s"].shape[1] != 2:
        return None
    from rigctl.model.realism import response_figures

    chosen = (ens["g1"], ens["g2"]) if ens and "g1" in ens else None
    try:
        fig = response_figures(t["s"], t["r"], t["session"], groups, ensembles=chosen)
    except Exception as exc:  # too few sessions or states for the figures: a finding, not a crash
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {**fig.as_dict(), "definition": RESPONSE_DEFINITION}


RESPONSE_DEFINITION = (
    "gain: mean evoked count per electrode (steps with a stimulus), last 10 sessions over first 10, minus 1; "
    "source_ratio: per ensemble (G1, G2 of spec 2.2), its mean count on steps with its source on over steps "
    "with it off, sessions 1-10 (on_off_counts: the two means); own_stim_share: fraction of the ensemble's "
    "electrodes that stimulate for its source; spont_per_window: mean count per electrode on steps with "
    "s = (0, 0) (nothing stimulated)")


def response_lines(response: dict[str, Any]) -> list[str]:
    """The figures of `response_analysis` as lines for the terminal."""
    if not response or "error" in response:
        return []

    def fmt(v, spec=".2f"):
        return "-" if v is None else format(v, spec)

    return [f"responses: gain {response['gain']:+.2f} (last 10 / first 10 sessions - 1); ensembles "
            f"{response['ensemble_sizes'][0]} / {response['ensemble_sizes'][1]} electrodes; response to own "
            f"source / other state (sessions 1-10) {fmt(response['source_ratio'][0], '.1f')} / "
            f"{fmt(response['source_ratio'][1], '.1f')}; share of own stimulating electrodes "
            f"{fmt(response['own_stim_share'][0])} / {fmt(response['own_stim_share'][1])}; spontaneous "
            f"{response['spont_per_window']:.3f} per electrode per window"]


def build_summary(run_dir: Path) -> dict[str, Any]:
    """The report's content. `run_status` is run.json's status (complete, running, interrupted, failed, or
    "not recorded"); a run that is not complete is summarised over the trials it has."""
    run_dir = Path(run_dir)
    meta = load_run_info(run_dir).meta
    t = load_run_trials(run_dir)
    n_sessions, per_session = _planned(run_dir)
    sessions = session_response_stats(t)
    events = read_jsonl(run_dir / "events.jsonl")
    model_rows = read_jsonl(run_dir / "model_sessions.jsonl")
    summary: dict[str, Any] = {
        "protocol": meta.get("protocol"), "seed": meta.get("seed"), "rig": meta.get("rig"),
        "drug": meta.get("drug", "none"), "run_status": str(meta.get("status") or "not recorded"),
        "rigctl_version": meta.get("rigctl_version"),
        "trials": int(len(t["session"])), "trials_planned": n_sessions * per_session,
        "sessions_completed": sum(1 for s in sessions if s["trials"] == per_session), "sessions_planned": n_sessions,
        "overruns": sum(1 for e in events if e.get("event") == "overrun"),
        "mean_evoked_per_trial": round(float(np.mean([s["mean_evoked_per_trial"] for s in sessions])), 4),
        "selectivity_definition": "per electrode and source j: (mean count | s_j=1 - mean count | s_j=0) / (sum)",
        "sessions": sessions,
    }
    ens = ensemble_analysis(t)
    if ens is not None:
        summary["ensembles"] = ens
    response = response_analysis(t, run_dir, ens)
    if response is not None:
        summary["response"] = response
    model: dict[str, Any] = {}
    for row in model_rows:
        if row.get("model") == "selectivity":
            continue
        model.setdefault(row["model"], []).append(row)
    if model:
        summary["model"] = {"per_session": model}
    try:
        from rigctl.model.report import run_model_summary  # the free-energy model's own summary
        extra = run_model_summary(run_dir)
        if extra:
            summary.setdefault("model", {}).update(extra)
    except ImportError:
        pass
    return summary


def _planned(run_dir: Path) -> tuple[int, int]:
    """(sessions, trials per session) of the run's protocol copy, protocol.yaml; StoreError if unusable."""
    from rigctl.yamlcheck import load_located

    path = Path(run_dir) / "protocol.yaml"
    if not path.exists():
        raise StoreError(f"{path}: no such file (every run directory holds its protocol)")
    data = load_located(path, error=StoreError).data
    out = []
    for name in ("sessions", "trials_per_session"):
        if name not in data:
            raise StoreError(f"{path}: field '{name}' is missing")
        value = data[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise StoreError(f"{path}: field '{name}' has value {value!r}; allowed: an integer >= 1")
        out.append(value)
    return out[0], out[1]


def incomplete_warning(summary: dict[str, Any], run_dir: Path) -> str | None:
    """One line saying that the run is not complete and what the report covers; None for a complete run."""
    if summary["run_status"] == COMPLETE:
        return None
    return (f"{run_dir}: the run is not complete (status: {summary['run_status']}); the report covers its "
            f"{summary['trials']} of {summary['trials_planned']} planned trials ({summary['sessions_completed']} of "
            f"{summary['sessions_planned']} sessions complete)")


def plot_summary(summary: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    paths = []
    sessions = summary["sessions"]
    idx = [s["index"] for s in sessions]
    title = f"{summary['protocol']} seed {summary['seed']} ({summary['rig']}, drug {summary['drug']})"
    if summary["run_status"] != COMPLETE:
        title += f" [not complete: {summary['run_status']}, {summary['trials']} of {summary['trials_planned']} trials]"

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(idx, [s["mean_evoked_per_trial"] for s in sessions], "k.-")
    axes[0].set(xlabel="session", ylabel="evoked spikes per trial (all electrodes)", title="evoked response")
    sel = np.array([[s["selectivity_index"]["s1"][e] for e in range(len(s["selectivity_index"]["s1"]))]
                    for s in sessions])
    im = axes[1].imshow(sel.T, aspect="auto", cmap="coolwarm", vmin=-1, vmax=1, origin="lower",
                        extent=(idx[0] - 0.5, idx[-1] + 0.5, -0.5, sel.shape[1] - 0.5))
    axes[1].set(xlabel="session", ylabel="electrode", title="selectivity to source 1")
    fig.colorbar(im, ax=axes[1])
    fig.suptitle(title)
    fig.tight_layout()
    p = out_dir / "evoked_selectivity.png"
    fig.savefig(p, dpi=100)
    plt.close(fig)
    paths.append(p)

    ens = summary.get("ensembles")
    if ens and "separation" in ens:
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        axes[0].plot(idx[:len(ens["separation"])], ens["separation"], "k.-")
        axes[0].axhline(0, color="grey", lw=0.5)
        axes[0].set(xlabel="session", ylabel="separation", title="ensemble separation (spec §2.4)")
        for ax, key, name in ((axes[1], "ensemble1", "source-1 ensemble"), (axes[2], "ensemble2", "source-2 ensemble")):
            for st, colour in zip(("11", "10", "01", "00"), ("k", "r", "b", "grey")):
                ax.plot(idx[:len(ens["state_means"][key][st])], ens["state_means"][key][st], ".-", color=colour,
                        label=f"s={st[0]},{st[1]}", ms=3)
            ax.set(xlabel="session", ylabel="mean raw response (spikes/stim)", title=name)
            ax.legend(fontsize=7, loc="center right", framealpha=0.6)
        fig.suptitle(f"{title}: G1={len(ens['g1'])} electrodes, G2={len(ens['g2'])} electrodes")
        fig.tight_layout()
        p = out_dir / "ensembles.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        paths.append(p)
    return paths


def write_report(run_dir: Path, warn: Callable[[str], None] | None = None) -> Path:
    """Write RUN_DIR/summary.json and the plots of the run's protocol kind; return the summary's path. `warn`
    gets one line if the run is not complete (`incomplete_warning`)."""
    run_dir = Path(run_dir)
    info = load_run_info(run_dir)
    kind = info.meta.get("protocol_kind", "bss")  # runs before protocol kinds were BSS runs
    summary, plotter = (build_summary(run_dir), plot_summary) if kind == "bss" else _kind_report(info, kind)
    message = incomplete_warning(summary, run_dir)
    if message and warn is not None:
        warn(message)
    path = run_dir / "summary.json"
    try:
        summary["plots"] = [p.name for p in plotter(summary, run_dir)]
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, indent=1) + "\n")
        tmp.replace(path)
    except OSError as exc:
        raise StoreError(f"{run_dir}: cannot write the report ({exc.strerror or exc})") from exc
    return path


def _kind_report(info: RunInfo, kind: str) -> tuple[dict[str, Any], Callable[[dict, Path], list[Path]]]:
    """The summary of a non-BSS run (common part, then the kind's own) and the function that plots it."""
    from rigctl.yamlcheck import load_located

    run_dir = info.path
    meta = info.meta
    protocol = load_located(run_dir / "protocol.yaml", error=StoreError).data
    trials = read_records(run_dir / "trials.bin", info.trial_dtype)
    planned = _planned_trials(protocol, kind)
    summary: dict[str, Any] = {
        "protocol": meta.get("protocol"), "kind": kind, "seed": meta.get("seed"), "rig": meta.get("rig"),
        "drug": meta.get("drug", "none"), "run_status": str(meta.get("status") or "not recorded"),
        "rigctl_version": meta.get("rigctl_version"), "trials": int(len(trials)), "trials_planned": planned,
        "sessions_completed": int(meta.get("status") == COMPLETE), "sessions_planned": 1,
        "mean_evoked_per_trial": round(float(trials["counts"].sum(axis=1).mean()), 4) if len(trials) else None,
    }
    title = f"{summary['protocol']} seed {summary['seed']} ({summary['rig']})"
    if kind == "electrode_scan":
        from rigctl.report_scan import plot_scan, scan_summary

        summary["scan"] = scan_summary(info, protocol)
        return summary, lambda s, out: plot_scan(s, meta.get("rig_description", {}).get("layout"), out, title)
    if kind == "spontaneous":
        from rigctl.report_spontaneous import plot_spontaneous, spontaneous_summary

        summary["spontaneous"] = spontaneous_summary(info, protocol)
        fs = float(meta["sample_rate_hz"])
        return summary, lambda s, out: plot_spontaneous(s, run_dir / "spikes.bin", fs, out, title)
    if kind == "maze":
        from rigctl.report_task import maze_summary, plot_maze

        summary["task"] = maze_summary(info, protocol)
        if meta.get("rig_description", {}).get("mode") == "agent":
            summary["sessions_planned"] = summary["task"].get("episodes")
            summary["mean_evoked_per_trial"] = None
        return summary, lambda s, out: plot_maze(s, info, protocol, out, title)
    if kind == "pong":
        from rigctl.report_task import plot_pong, pong_task_summary

        summary["task"] = pong_task_summary(trials, float(meta["sample_rate_hz"]))
        return summary, lambda s, out: plot_pong(s, out, title)
    return summary, lambda s, out: []  # a lab's Python protocol: its trials are in trials.bin (export trials)


def _planned_trials(protocol: dict[str, Any], kind: str) -> int | None:
    if kind == "electrode_scan":
        return len(protocol.get("electrodes", [])) * int(protocol.get("repetitions", 0))
    if kind == "spontaneous":
        return 0
    if kind == "pong":
        return int(protocol.get("trials", 0))
    return None
