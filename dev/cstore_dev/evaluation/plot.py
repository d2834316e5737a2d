"""PNG of windowed prequential AUC over the stream: cstore, River, Vowpal Wabbit and the frozen model, with drifts
marked."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cstore_dev.evaluation.deps import require_pyplot
from cstore_dev.evaluation.run import as_array

_STYLE = {"cstore": ("tab:blue", "-", "cstore (client + feedback + workers on Cassandra)"),
          "river": ("tab:orange", "--", "River LogisticRegression, same FTRL settings"),
          "vw": ("tab:green", "-.", "Vowpal Wabbit, --loss_function logistic (its defaults)"),
          "frozen": ("tab:gray", ":", "frozen after the first 10%")}


def plot(report: Mapping[str, Any], path: str | Path) -> Path:
    """Write the plot of one :func:`cstore_dev.evaluation.run.evaluate` report to ``path``."""
    plt = require_pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    t = report["windowed_t"]
    for who, (color, ls, label) in _STYLE.items():
        ax.plot(t, as_array(report["windowed_auc"][who]), color=color, linestyle=ls, linewidth=1.6, label=label)
    for i, (p, w) in enumerate(zip(report["drift_points"], report["drift_widths"])):
        ax.axvline(p, color="black", linewidth=1.0, label="true drift" if i == 0 else None)
        if w > 1:
            ax.axvspan(p - w / 2, p + w / 2, color="black", alpha=0.07)
    lo = ax.get_ylim()[0]
    ax.plot(report["detections"], [lo] * len(report["detections"]), "^", color="tab:blue", markersize=10,
            clip_on=False, label="cstore drift detection")
    ax.plot(report["river_adwin_detections"], [lo] * len(report["river_adwin_detections"]), "x", color="tab:red",
            markersize=7, clip_on=False, label="River ADWIN alarm")
    ax.set_ylim(bottom=lo)
    ax.set_xlabel("event")
    ax.set_ylabel(f"AUC over the last {report['window']} events")
    ax.set_title(f"{report['dataset']}: prequential AUC (cstore {report['cstore_auc']}, river {report['river_auc']}, "
                 f"vw {report.get('vw_auc')}, frozen {report['frozen_auc']})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", framealpha=0.9)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out
