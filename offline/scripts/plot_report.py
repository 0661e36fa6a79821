"""Plots of a `stemmark eval` report: BER by attack family, confidence of marked vs unmarked
readings, and the spectrogram of one mark. Called by `stemmark eval` with the report folder:

    python plot_report.py OUT_DIR

Reads OUT_DIR/report.json (and OUT_DIR/example-original.wav, example-marked.wav when present),
writes OUT_DIR/ber-by-attack.png, confidence.png and mark-spectrogram.png.
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt
import numpy as np

from wav_f32 import read_wav

COLUMNS = ["Origin", "Basic/Noise", "Filter", "Time/Pitch"]


def ber(count):
    return 100.0 * count["errors"] / count["bits"] if count["bits"] else float("nan")


def ber_by_attack(report, out):
    rows = []  # (label, [BER per column])
    for s in report["sets"]:
        name = Path(s["models"]).name or s["models"]
        for scenario, table in sorted(s["table1"].items()):
            values = []
            for c in COLUMNS:
                pair = table.get(c)
                values.append(ber({"errors": pair[0]["errors"] + pair[1]["errors"], "bits": pair[0]["bits"] + pair[1]["bits"]}) if pair else float("nan"))
            rows.append((f"{name}: {scenario}", values))
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(rows)
    x = np.arange(len(COLUMNS))
    for i, (label, values) in enumerate(rows):
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, values, width, label=label)
    ax.axhline(50, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x, COLUMNS)
    ax.set_ylabel("BER after separation (%)")
    ax.set_ylim(0, 55)
    ax.set_title("Bit error rate by attack family (Table 1)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "ber-by-attack.png", dpi=120)
    plt.close(fig)
    return True


def confidence(report, out):
    s = report["sets"][0]
    marked, unmarked = s.get("z_marked", []), s.get("z_unmarked", [])
    if not marked and not unmarked:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    lo = min(marked + unmarked + [-3.0])
    hi = max(marked + unmarked + [8.0])
    bins = np.linspace(lo, hi, 40)
    ax.hist(unmarked, bins=bins, alpha=0.6, label=f"unmarked / wrong key ({len(unmarked)})")
    ax.hist(marked, bins=bins, alpha=0.6, label=f"marked, own key ({len(marked)})")
    if s.get("threshold") is not None:
        ax.axvline(s["threshold"], color="k", lw=1, label=f"threshold z = {s['threshold']:.2f}")
    ax.set_xlabel("calibrated z (sign consistency of the item's blocks, key's block masks taken off)")
    ax.set_ylabel("readings")
    ax.set_title(f"Detection confidence: {Path(s['models']).name or s['models']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "confidence.png", dpi=120)
    plt.close(fig)
    return True


def spectrogram_db(x, n_fft=2048, hop=512):
    win = np.hanning(n_fft)
    frames = [x[i : i + n_fft] * win for i in range(0, len(x) - n_fft, hop)]
    mag = np.abs(np.fft.rfft(np.array(frames), axis=1)).T
    return 20 * np.log10(mag + 1e-9)


def mark_spectrogram(out):
    orig_p, marked_p = out / "example-original.wav", out / "example-marked.wav"
    if not (orig_p.exists() and marked_p.exists()):
        return False
    rate, orig = read_wav(str(orig_p))
    _, marked = read_wav(str(marked_p))
    orig, marked = orig.mean(axis=0), marked.mean(axis=0)
    n = min(len(orig), len(marked))
    host, mark = spectrogram_db(orig[:n]), spectrogram_db(marked[:n] - orig[:n])
    extent = [0, n / rate, 0, rate / 2000]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    vmax = host.max()
    for ax, spec, title in [(axes[0], host, "host (original stem)"), (axes[1], mark, "mark (marked − original)")]:
        im = ax.imshow(spec, origin="lower", aspect="auto", extent=extent, vmin=vmax - 90, vmax=vmax, cmap="magma")
        ax.set_title(title)
        ax.set_xlabel("time (s)")
    axes[0].set_ylabel("frequency (kHz)")
    fig.colorbar(im, ax=axes, label="dB")
    fig.savefig(out / "mark-spectrogram.png", dpi=120)
    plt.close(fig)
    return True


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: plot_report.py OUT_DIR")
    out = Path(sys.argv[1])
    report = json.loads((out / "report.json").read_text())
    made = [name for name, f in [("ber-by-attack.png", ber_by_attack), ("confidence.png", confidence)] if f(report, out)]
    if mark_spectrogram(out):
        made.append("mark-spectrogram.png")
    print(" ".join(made))


if __name__ == "__main__":
    main()
