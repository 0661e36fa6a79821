#!/usr/bin/env python3
"""ViSQOL audio-mode MOS-LQO of (reference, degraded) WAV pairs, for `stemmark eval`.

Usage (offline/src/eval/visqol.rs runs it with the Python of .deps/venv):
    python visqol_score.py DIR N

DIR holds ref_0.wav, deg_0.wav, ..., ref_{N-1}.wav, deg_{N-1}.wav: mono, same rate, same
length. One JSON line per pair goes to stdout as it finishes, in order:
    {"index": i, "moslqo": 4.73}
Anything wrong ends the run with a message on stderr and a non-zero exit status.

Needs visqol-python 3.8.0 (pure-Python port of Google's ViSQOL v3.3.3), scipy and soundfile.

Sample rate: the package does not resample; in audio mode it only warns when the input is not
48 kHz, because the audio-mode SVR quality model (and the C++ original it matches) assumes 48 kHz
input (32 gammatone bands up to 15 kHz; Nyquist must be above that). So both signals are
resampled here to 48 kHz with scipy.signal.resample_poly (polyphase Kaiser-windowed FIR, ratio
reduced by the gcd: 160/147 from 44.1 kHz); reference and degraded go through the same filter,
so the resampling itself adds no difference between them.

Channels: ViSQOL scores mono (its own WAV loader averages channels), so the caller sends the mid
channel (mean of the channels) of each stem.
"""

import json
import math
import sys
from math import gcd
from pathlib import Path

TARGET_RATE = 48000


def fail(msg):
    print(f"visqol_score.py: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) != 3:
        fail("usage: visqol_score.py DIR N")
    folder = Path(sys.argv[1])
    n = int(sys.argv[2])

    import numpy as np
    import soundfile as sf
    from scipy.signal import resample_poly
    from visqol import VisqolApi

    api = VisqolApi()
    api.create(mode="audio")

    def load(path):
        data, rate = sf.read(str(path), dtype="float64", always_2d=True)
        mono = data.mean(axis=1)
        if not np.all(np.isfinite(mono)):
            fail(f"{path.name}: non-finite samples")
        if rate != TARGET_RATE:
            g = gcd(TARGET_RATE, rate)
            mono = resample_poly(mono, TARGET_RATE // g, rate // g)
        return mono, rate

    for i in range(n):
        ref, ref_rate = load(folder / f"ref_{i}.wav")
        deg, deg_rate = load(folder / f"deg_{i}.wav")
        if ref_rate != deg_rate or len(ref) != len(deg):
            fail(f"pair {i}: reference and degraded differ in rate or length")
        if not np.any(ref):
            fail(f"pair {i}: the reference is silent; ViSQOL cannot score against silence")
        if not np.any(deg):
            fail(f"pair {i}: the degraded signal is silent; ViSQOL cannot level-match silence")
        try:
            result = api.measure_from_arrays(ref, deg, sample_rate=TARGET_RATE)
        except Exception as exc:  # noqa: BLE001 - reported to the caller with the pair index
            fail(f"pair {i}: ViSQOL failed: {type(exc).__name__}: {exc}")
        mos = float(result.moslqo)
        if not math.isfinite(mos):
            fail(f"pair {i}: ViSQOL returned a non-finite MOS ({mos})")
        print(json.dumps({"index": i, "moslqo": mos}), flush=True)


if __name__ == "__main__":
    main()
