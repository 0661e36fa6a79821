"""Plots of a `stemmark eval` report: BER by attack family, confidence of marked vs unmarked
readings, and the spectrogram of one mark. Called by `stemmark eval` with the report folder:

    python plot_report.py OUT_DIR

Reads OUT_DIR/report.json (and OUT_DIR/example-original.wav, example-marked.wav when present),
writes OUT_DIR/ber-by-attack.png, confidence.png and mark-spectrogram.png.
"""

import json
import sys
import wave
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt
import numpy as np

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
    ax.set_xlabel("calibrated z (sign consistency over the item's blocks)")
    ax.set_ylabel("readings")
    ax.set_title(f"Detection confidence: {Path(s['models']).name or s['models']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "confidence.png", dpi=120)
    plt.close(fig)
    return True


def read_wav(path):
    """Mono float samples of a 16-bit PCM or 32-bit float WAV (the stdlib wave module reads PCM only)."""
    data = path.read_bytes()
    # Walk the RIFF chunks: fmt gives the format, data the samples.
    pos, fmt, rate, channels, samples = 12, None, None, None, None
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        body = data[pos + 8 : pos + 8 + size]
        if cid == b"fmt ":
            fmt = int.from_bytes(body[0:2], "little")
            channels = int.from_bytes(body[2:4], "little")
            rate = int.from_bytes(body[4:8], "little")
            bits = int.from_bytes(body[14:16], "little")
            if fmt == 0xFFFE:  # WAVE_FORMAT_EXTENSIBLE: the sub-format's first two bytes
                fmt = int.from_bytes(body[24:26], "little")
        elif cid == b"data":
            if fmt == 3 and bits == 32:
                samples = np.frombuffer(body, dtype="<f4")
            elif fmt == 1 and bits == 16:
                samples = np.frombuffer(body, dtype="<i2").astype(np.float32) / 32768.0
            else:
                raise ValueError(f"{path}: unsupported WAV format {fmt}/{bits} bit")
        pos += 8 + size + (size & 1)
    if samples is None:
        raise ValueError(f"{path}: no data chunk")
    return samples.reshape(-1, channels).mean(axis=1), rate


def spectrogram_db(x, n_fft=2048, hop=512):
    win = np.hanning(n_fft)
    frames = [x[i : i + n_fft] * win for i in range(0, len(x) - n_fft, hop)]
    mag = np.abs(np.fft.rfft(np.array(frames), axis=1)).T
    return 20 * np.log10(mag + 1e-9)


def mark_spectrogram(out):
    orig_p, marked_p = out / "example-original.wav", out / "example-marked.wav"
    if not (orig_p.exists() and marked_p.exists()):
        return False
    orig, rate = read_wav(orig_p)
    marked, _ = read_wav(marked_p)
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
