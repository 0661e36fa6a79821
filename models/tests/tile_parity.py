"""Runs the numpy prototype of the tile channel on the product's patterns and test hosts, and
writes what the Rust parity test compares with (see models/src/tile/parity.rs).

usage: python tile_parity.py CHANNEL_DIR INPUT_DIR OUT_JSON
  CHANNEL_DIR  folder holding the prototype (wm.py, cyclecode.py)
  INPUT_DIR    where `write_parity_inputs` wrote inputs.json
"""
import json
import sys

import numpy as np

sys.path.insert(0, sys.argv[1])
import wm  # noqa: E402
from cyclecode import rank1_cell_weights  # noqa: E402

inp = json.load(open(f"{sys.argv[2]}/inputs.json"))
d = wm.Design(**wm.FROZEN2)
rows, cols = d.nrow, d.ncol
unit_bit = np.array(inp["unit_bit"], dtype=int)
unit_sign = np.array(inp["unit_sign"], dtype=float)
scr = np.array(inp["scramble"], dtype=float)
xor = np.array(inp["xor"], dtype=float)
messages = np.array(inp["messages"], dtype=float)
stride = inp["tile_stride"]

# The prototype's pattern tuple (bit, sign, xor, unit, ubit, scr) from the product's patterns:
# unit u = j*rows + r covers tiles (2j, r) (sign +s_u) and (2j+1, r) (sign -s_u).
c = np.arange(cols)[:, None]
r = np.arange(rows)[None, :]
unit = (c // 2) * rows + r
pat = (unit_bit[unit], unit_sign[unit] * np.where(c % 2 == 0, 1.0, -1.0), xor, unit, unit_bit, scr)
assert pat[0].shape == (cols, rows)


def flat(a):
    """[cols, rows] -> the product's tile order c*rows + r."""
    return a.reshape(-1)


def read(y, nb):
    S, V = zip(*[d.stat(np.abs(wm.stft(y[b * wm.BLOCK:(b + 1) * wm.BLOCK])), None, pat, blk=b, parts=True)
                 for b in range(nb)])
    return np.array(S), np.array(V)


out = []
for name, host in inp["hosts"]:
    x = np.array(host, dtype=float)
    nb = len(x) // wm.BLOCK
    # The product's STFT keeps every frame whose window touches the signal (stft.rs,
    # frames_for_len); the prototype's stops at len // HOP. Zero padding gives the same frames,
    # so the marked tail is resynthesised from the same (unmasked) frames on both sides.
    frames = (len(x) - 1 + wm.NFFT // 2) // wm.HOP + 1
    pad = (frames - len(x) // wm.HOP) * wm.HOP
    M = wm.stft(np.pad(x, (0, pad)))
    mags = [np.abs(M[:, b * wm.NFR:(b + 1) * wm.NFR]) for b in range(nb)]
    levels = flat(d.tiles(mags[0]))[::stride]
    mask = np.ones(M.shape)
    gains = []
    for b in range(nb):
        m = d.mask(mags[b], messages[b], None, pat, blk=b)
        mask[:, b * wm.NFR:(b + 1) * wm.NFR] = m
        g = np.log(m[d.k_lo:d.k_hi:d.tb, ::d.tf]).T  # one cell per tile -> [cols, rows]
        gains.append(flat(g)[::stride].tolist())
    marked = wm.istft(M * mask, len(x) + pad)[:len(x)]
    S, V = read(marked, nb)
    l3 = S / np.sqrt(V) * xor[np.arange(nb) % 16][:, :, None]
    w = rank1_cell_weights(l3)
    logits = np.sum(w[:, None, :] * S, axis=2) / np.sqrt(np.sum(w[:, None, :] ** 2 * V, axis=2))
    S0, V0 = read(x, nb)
    out.append(dict(name=name, levels=levels.tolist(), gains=gains, s=S.tolist(), v=V.tolist(),
                    logits=logits.tolist(), s_null=S0.tolist(), v_null=V0.tolist()))
    print(f"{name}: {nb} blocks, bit errors per block",
          [int(np.sum(logits[b] * messages[b] <= 0)) for b in range(nb)])



def rounded(v):
    """8 significant digits: the Rust side compares at 1e-5 and coarser."""
    if isinstance(v, list):
        return [rounded(x) for x in v]
    if isinstance(v, dict):
        return {k: rounded(x) for k, x in v.items()}
    return float(f"{v:.8g}") if isinstance(v, float) else v


json.dump(rounded(out), open(sys.argv[3], "w"), separators=(",", ":"))
