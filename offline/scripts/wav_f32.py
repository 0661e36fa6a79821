"""Float WAV files for the project's Python tools, with numpy only (the tools' venvs differ, and
the stdlib `wave` module reads integer PCM only)."""

import os
import struct

import numpy as np


def read_wav(path):
    """32-bit float (or 16-bit PCM) WAV -> (rate, float32 array [channels, samples])."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError(f"{path}: not a RIFF/WAVE file")
    pos, fmt, pcm = 12, None, None
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = data[pos + 8:pos + 8 + size]
        if cid == b"fmt ":
            tag, ch, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if tag == 0xFFFE:  # WAVE_FORMAT_EXTENSIBLE: the real tag opens the subformat GUID
                tag = struct.unpack("<H", body[24:26])[0]
            fmt = (tag, ch, rate, bits)
        elif cid == b"data":
            pcm = body
        pos += 8 + size + (size & 1)
    if fmt is None or pcm is None:
        raise ValueError(f"{path}: no fmt or data chunk")
    tag, ch, rate, bits = fmt
    if (tag, bits) == (3, 32):
        x = np.frombuffer(pcm, dtype="<f4")
    elif (tag, bits) == (1, 16):
        x = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    else:
        raise ValueError(f"{path}: unsupported WAV format tag {tag} with {bits} bits")
    x = x[: len(x) // ch * ch]
    return rate, x.reshape(-1, ch).T.astype(np.float32)


def write_wav(path, x, rate):
    """float32 [channels, samples] -> 32-bit float WAV, through a temporary name."""
    x = np.ascontiguousarray(np.asarray(x, dtype="<f4").T)
    ch = x.shape[1]
    pcm = x.tobytes()
    fmt = struct.pack("<HHIIHH", 3, ch, rate, rate * ch * 4, ch * 4, 32)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(pcm)) + b"WAVE")
        f.write(b"fmt " + struct.pack("<I", len(fmt)) + fmt)
        f.write(b"data" + struct.pack("<I", len(pcm)) + pcm)
    os.replace(tmp, path)
