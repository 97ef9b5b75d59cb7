"""Paper tables from a folder of result records: ``aum-results DIR`` or ``python -m eval.results DIR``.

For each mode (finetune, probe, hear) one table of benchmarks (rows) x initialisations (columns: scratch,
imagenet, ssl, official - always all four, a missing cell shows ``-``) with ``mean +- std (n=..)``, written as
Markdown, CSV and LaTeX, plus a grouped bar chart (PNG, error bars = std) and ``summary.csv`` (long format,
numeric). Rows are the benchmarks of that mode, ``benchmark (model)`` when the mode holds several models.

Needle-in-a-haystack records (mode ``niah``, :mod:`eval.niah`) get their own table instead: rows model x haystack
x position x run mode, columns the haystack lengths (``niah.md/.csv/.tex``, ``niah_summary.csv``), and the plot of
score against length (``niah.png``, log x; one line per model and position, the run mode as the line style).

Statistics: records with ``fold="mean"`` (the per-run summaries the probe writes) are left out and recomputed.
Within a cell, several seeds: each seed's records are averaged over folds, then mean, std and n are over seeds
(``over="seeds"``); a single seed: over its folds (``over="folds"``), or its one run (``n=1``, no std). ``std`` is
the sample standard deviation (ddof=1). Values are scaled by ``--scale`` (default 100: percent).
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from aum.cli import CommandLine, run_cli
from eval.records import INITS, MODES, ResultRecord, read_records

MISSING = "-"
KEYS = ["mode", "benchmark", "model", "init", "metric"]
NIAH_ROW = ["benchmark", "model", "haystack", "position", "run_mode"]
_POSITION_NAMES = {0.0: "start", 0.5: "middle", 1.0: "end"}


def records_frame(folder) -> pd.DataFrame:
    """One row per record under ``folder`` (recursively), the ``fold="mean"`` summary records left out."""
    rows = [dataclasses.asdict(r) for r in read_records(folder)]
    df = pd.DataFrame(rows, columns=[f.name for f in dataclasses.fields(ResultRecord)])
    return df[df["fold"].astype(str) != "mean"].reset_index(drop=True)


def _cell_stats(group: pd.DataFrame) -> pd.Series:
    if group["seed"].nunique() > 1:
        values, over = group.groupby("seed")["value"].mean().to_numpy(), "seeds"
    else:
        values = group["value"].to_numpy(dtype=float)
        over = "folds" if group["fold"].notna().any() and len(values) > 1 else "runs"
    std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
    return pd.Series({"mean": float(np.mean(values)), "std": std, "n": len(values), "over": over})


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Long table: one row per (mode, benchmark, model, init, metric) with ``mean``, ``std``, ``n``, ``over``."""
    if df.empty:
        return pd.DataFrame(columns=KEYS + ["mean", "std", "n", "over"])
    out = df.groupby(KEYS, sort=True)[["value", "seed", "fold"]].apply(_cell_stats).reset_index()
    out["n"] = out["n"].astype(int)
    return out


def format_cell(mean: float, std: float, n: int, scale: float = 100.0, digits: int = 2, pm: str = "±") -> str:
    """``"83.25 ± 1.20 (n=5)"``; without std (n=1) ``"83.25 (n=1)"``."""
    text = f"{mean * scale:.{digits}f}"
    if n > 1 and np.isfinite(std):
        text += f" {pm} {std * scale:.{digits}f}"
    return f"{text} (n={n})"


def _row_labels(sub: pd.DataFrame) -> pd.Series:
    several = sub["model"].nunique() > 1
    return sub["benchmark"] + (" (" + sub["model"] + ")" if several else "")


def wide_table(summary: pd.DataFrame, mode: str, scale: float = 100.0, digits: int = 2, pm: str = "±",
               benchmarks=()) -> pd.DataFrame:
    """Benchmarks x initialisations of one ``mode`` as strings; every init a column, missing cells ``-``.

    The first column is the metric. ``benchmarks`` adds rows (all ``-``) for benchmarks without a record.
    """
    sub = summary[summary["mode"] == mode].copy()
    sub["row"] = _row_labels(sub) if len(sub) else pd.Series(dtype=str)
    sub["cell"] = [format_cell(m, s, n, scale, digits, pm) for m, s, n in zip(sub["mean"], sub["std"], sub["n"])]
    rows = list(dict.fromkeys(list(sub.sort_values(["benchmark", "model"])["row"]) +
                              [b for b in benchmarks if b not in set(sub["benchmark"])]))
    table = pd.DataFrame(MISSING, index=pd.Index(rows, name="benchmark"), columns=["metric", *INITS])
    for row, g in sub.groupby("row"):
        table.loc[row, "metric"] = "/".join(sorted(set(g["metric"])))
        for _, r in g.iterrows():
            table.loc[row, r["init"]] = r["cell"]
    return table


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub Markdown table (the index as the first column)."""
    head = [table.index.name or "", *map(str, table.columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    lines += ["| " + " | ".join([str(i), *map(str, r)]) + " |" for i, r in zip(table.index, table.to_numpy())]
    return "\n".join(lines) + "\n"


def _tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                 ("±", r"$\pm$")):
        text = text.replace(a, b)
    return text


def to_latex(table: pd.DataFrame, caption: str = "", label: str = "") -> str:
    """A booktabs LaTeX table (``\\usepackage{booktabs}``), special characters escaped, ``±`` as ``$\\pm$``."""
    cols = [table.index.name or "", *map(str, table.columns)]
    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "c" * len(table.columns) + "}",
             r"\toprule", " & ".join(_tex(c) for c in cols) + r" \\", r"\midrule"]
    lines += [" & ".join(_tex(str(v)) for v in [i, *r]) + r" \\" for i, r in zip(table.index, table.to_numpy())]
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [rf"\caption{{{_tex(caption)}}}"] if caption else []
    lines += [rf"\label{{{label}}}"] if label else []
    return "\n".join(lines + [r"\end{table}"]) + "\n"


def bar_chart(summary: pd.DataFrame, mode: str, path, scale: float = 100.0) -> Path:
    """Grouped bars (one group per benchmark row, one bar per init, std error bars) saved as a PNG.

    A missing cell has no bar and a small ``-`` at its foot.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    sub = summary[summary["mode"] == mode].copy()
    sub["row"] = _row_labels(sub)
    rows = list(dict.fromkeys(sub.sort_values(["benchmark", "model"])["row"]))
    width = 0.8 / len(INITS)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(rows) + 1.5), 3.6))
    for j, init in enumerate(INITS):
        cell = sub[sub["init"] == init].set_index("row")
        x = np.arange(len(rows)) + (j - (len(INITS) - 1) / 2) * width
        have = [r in cell.index for r in rows]
        means = [cell.loc[r, "mean"] * scale if h else 0.0 for r, h in zip(rows, have)]
        errs = [np.nan_to_num(cell.loc[r, "std"]) * scale if h else 0.0 for r, h in zip(rows, have)]
        xs = x[np.array(have, bool)]
        ax.bar(xs, np.array(means)[have], width, yerr=np.array(errs)[have], capsize=3, label=init,
               color=f"C{j}")
        for xm in x[~np.array(have, bool)]:
            ax.text(xm, 0, MISSING, ha="center", va="bottom", fontsize=8, color="0.4")
    many = len(rows) > 4
    ax.set_xticks(np.arange(len(rows)), [r.replace(" (", "\n(") for r in rows], rotation=20 if many else 0,
                  ha="right" if many else "center")
    ax.set_ylabel("score" + (" (%)" if scale == 100 else ""))
    ax.set_title(f"{mode}: mean ± std")
    handles = [Patch(color=f"C{j}", label=init) for j, init in enumerate(INITS)]   # also for inits without bars
    ax.legend(handles=handles, fontsize=8, ncols=len(INITS), loc="upper center",
              bbox_to_anchor=(0.5, -0.3 if many else -0.18))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def position_name(position: float) -> str:
    """``start``, ``middle`` and ``end`` for 0, 0.5 and 1; other positions as numbers."""
    return _POSITION_NAMES.get(float(position), f"{float(position):g}")


def niah_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Long table of the ``niah`` records of ``df`` (:func:`records_frame`): one row per benchmark, model, haystack
    (``babble-x@10dB`` for a noise haystack), position, run mode, metric and length (``length_frames``) with
    ``mean``, ``std``, ``n`` and ``over`` (seeds, as the other tables)."""
    cols = NIAH_ROW + ["metric", "length_frames", "mean", "std", "n", "over"]
    sub = df[df["mode"] == "niah"]
    if sub.empty:
        return pd.DataFrame(columns=cols)
    cells = pd.DataFrame([{"haystack": e["haystack"] + ("" if e.get("snr_db") is None else f"@{e['snr_db']:g}dB"),
                           "position": float(e["position"]), "run_mode": e["run_mode"],
                           "length_frames": int(e["length_frames"])} for e in sub["extra"]], index=sub.index)
    sub = pd.concat([sub.drop(columns=["extra"]), cells], axis=1)
    out = sub.groupby(NIAH_ROW + ["metric", "length_frames"], sort=True)[["value", "seed", "fold"]] \
        .apply(_cell_stats).reset_index()
    out["n"] = out["n"].astype(int)
    return out[cols]


def niah_table(summary: pd.DataFrame, scale: float = 100.0, digits: int = 1, pm: str = "±") -> pd.DataFrame:
    """Rows model x haystack x position x run mode (``benchmark / model`` when there are several benchmarks),
    columns ``haystack, position, mode, metric`` and one per length (``5s``, ``10m``, ...), as strings; a
    missing cell is ``-``, a single run shows its value alone."""
    from eval.haystack import format_length
    lengths = sorted(set(summary["length_frames"]))
    several = summary["benchmark"].nunique() > 1
    rows = {}
    for key, g in summary.groupby(NIAH_ROW, sort=True):
        bench, model, hay, pos, mode = key
        row = {"haystack": hay, "position": position_name(pos), "mode": mode,
               "metric": "/".join(sorted(set(g["metric"])))}
        row.update({format_length(n): MISSING for n in lengths})
        for _, r in g.iterrows():
            row[format_length(r["length_frames"])] = (format_cell(r["mean"], r["std"], r["n"], scale, digits, pm)
                                                      if r["n"] > 1 else f"{r['mean'] * scale:.{digits}f}")
        rows[(f"{bench} / {model}" if several else model, hay, pos, mode)] = row
    table = pd.DataFrame([rows[k] for k in sorted(rows)], index=pd.Index([k[0] for k in sorted(rows)], name="model"))
    return table


def niah_plot(summary: pd.DataFrame, path, scale: float = 100.0) -> Path:
    """Score against haystack length (seconds, log scale) as a PNG: one panel per haystack, one line per model
    and position (colour; marker by position), the run mode as the line style (``whole`` solid, ``window``
    dashed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from eval.haystack import format_length
    hays = sorted(set(summary["haystack"]))
    fig, axes = plt.subplots(1, len(hays), figsize=(4.6 * len(hays) + 1.6, 3.8), sharey=True, squeeze=False)
    several = summary["benchmark"].nunique() > 1
    lines = sorted({(b, m, p) for b, m, p in zip(summary["benchmark"], summary["model"], summary["position"])})
    styles = {"whole": "-", "window": "--"}
    markers = {0.0: "o", 0.5: "s", 1.0: "^"}
    for ax, hay in zip(axes[0], hays):
        sub = summary[summary["haystack"] == hay]
        for j, (bench, model, pos) in enumerate(lines):
            for mode, g in sub[(sub["benchmark"] == bench) & (sub["model"] == model) & (sub["position"] == pos)] \
                    .groupby("run_mode"):
                g = g.sort_values("length_frames")
                name = f"{bench} / {model}" if several else model
                ax.plot(g["length_frames"] / 100.0, g["mean"] * scale, styles.get(mode, ":"), color=f"C{j % 10}",
                        marker=markers.get(float(pos), "x"), ms=4, label=f"{name}, {position_name(pos)}, {mode}")
        ax.set_xscale("log")
        ticks = sorted(set(summary["length_frames"]))
        ax.set_xticks([t / 100.0 for t in ticks], [format_length(t) for t in ticks], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel("input length (log scale)")
        ax.set_title(hay)
        ax.grid(True, which="both", alpha=0.3)
    metric = "/".join(sorted(set(summary["metric"])))
    axes[0][0].set_ylabel(metric + (" (%)" if scale == 100 else ""))
    handles, labels = axes[0][-1].get_legend_handles_labels()
    for ax in axes[0][:-1]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle("needle in a haystack: score against input length")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def write_niah_tables(frame: pd.DataFrame, out, scale: float = 100.0, digits: int = 1) -> dict:
    """Write ``niah.md/.csv/.tex``, ``niah_summary.csv`` and ``niah.png`` into ``out`` from the ``niah`` records
    of ``frame``; returns ``{kind: path}`` and the Markdown under ``"markdown"`` (``{}`` without such records)."""
    summary = niah_summary(frame)
    if summary.empty:
        return {}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = niah_table(summary, scale, digits)
    md = "### niah\n\n" + to_markdown(table)
    paths = {"md": out / "niah.md", "csv": out / "niah.csv", "tex": out / "niah.tex", "png": out / "niah.png",
             "summary": out / "niah_summary.csv"}
    paths["md"].write_text(md)
    table.to_csv(paths["csv"])
    paths["tex"].write_text(to_latex(table, caption="needle in a haystack: score per input length",
                                     label="tab:niah"))
    summary.to_csv(paths["summary"], index=False)
    niah_plot(summary, paths["png"], scale)
    return {**paths, "markdown": md}


def write_tables(folder, out=None, scale: float = 100.0, digits: int = 2, benchmarks=()) -> dict[str, dict]:
    """Gather the records under ``folder`` and write, per mode present, ``<mode>.md/.csv/.tex/.png`` plus
    ``summary.csv`` into ``out`` (default ``folder/tables``); ``niah`` records go to their own table and plot
    (:func:`write_niah_tables`). Returns ``{mode: {kind: path}}`` and the Markdown under ``"markdown"``."""
    out = Path(out) if out else Path(folder) / "tables"
    out.mkdir(parents=True, exist_ok=True)
    frame = records_frame(folder)
    summary = summarise(frame[frame["mode"] != "niah"].reset_index(drop=True))
    summary.to_csv(out / "summary.csv", index=False)
    written = {}
    for mode in [m for m in MODES if m in set(summary["mode"])]:
        table = wide_table(summary, mode, scale, digits, benchmarks=benchmarks)
        md = f"### {mode}\n\n" + to_markdown(table)
        paths = {"md": out / f"{mode}.md", "csv": out / f"{mode}.csv", "tex": out / f"{mode}.tex",
                 "png": out / f"{mode}.png"}
        paths["md"].write_text(md)
        table.to_csv(paths["csv"])
        paths["tex"].write_text(to_latex(table, caption=f"{mode}: mean ± std over seeds or folds (n)",
                                         label=f"tab:{mode}"))
        bar_chart(summary, mode, paths["png"], scale)
        written[mode] = {**paths, "markdown": md}
    niah = write_niah_tables(frame, out, scale)
    if niah:
        written["niah"] = niah
    return written


def build_parser() -> CommandLine:
    """The command line of ``aum-results`` (:class:`aum.cli.CommandLine`)."""
    p = CommandLine("aum-results", __doc__.split("\n\n")[0])
    p.add_argument("folder", help="folder of result records (*.json, searched recursively)")
    p.add_argument("--out", help="where to write the tables (default: FOLDER/tables)")
    p.add_argument("--scale", type=float, default=100.0, help="multiply values (default 100: percent)")
    p.add_argument("--digits", type=int, default=2)
    p.add_argument("--benchmarks", type=lambda s: [b for b in s.split(",") if b], default=[],
                   help="comma-separated benchmarks that get a row even without records")
    return p


def main(argv=None) -> int:
    """Entry point of ``aum-results`` / ``python -m eval.results``: writes the tables and prints the Markdown.
    Returns the exit status: 0 done, 1 no records found, 2 a usage error (:func:`aum.cli.run_cli`)."""
    return run_cli("aum-results", _main, argv)


def _main(argv: list[str]) -> int:
    p = build_parser()
    args = p.parse(argv)
    if not Path(args.folder).is_dir():
        p.error(f"no such folder: {args.folder}")
    written = write_tables(args.folder, args.out, args.scale, args.digits, args.benchmarks)
    if not written:
        print(f"no result records under {args.folder}")
        return 1
    for mode, paths in written.items():
        print(paths["markdown"])
    print(f"tables written to {Path(next(iter(written.values()))['md']).parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
