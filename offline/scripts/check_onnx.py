#!/usr/bin/env python3
"""Check Stemmark's Rust-exported ONNX files with the reference tools.

Usage (see offline/src/onnx/testmodels.rs):
    STEMMARK_ONNX_OUT=/tmp/plumbing cargo test -p stemmark-offline --lib \
        onnx::testmodels::tests::export_for_python_check -- --ignored
    python3 offline/scripts/check_onnx.py /tmp/plumbing

Needs onnx, onnxruntime and numpy (a throwaway venv is fine; nothing here runs at build time).
For each of embedder/detector/separator.onnx: onnx.checker with full_check (includes strict
shape inference), then ONNX Runtime at batch 1 and 3 and two frame/length values, checking output
shapes, the mask band and that the stems sum to the mix. ops.onnx, if present, runs every graph
builder helper and compares a few against NumPy. Fixed dims are read from the models themselves,
so this script does not restate the signal spec. Exits non-zero on the first failure.
"""

import math
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

RNG = np.random.default_rng(0)


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def expect(cond, msg):
    if not cond:
        fail(msg)


def load(path):
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    expect(opsets == {"ai.onnx": 17}, f"{path.name}: opsets {opsets}")
    expect(model.ir_version == 8, f"{path.name}: ir_version {model.ir_version}")
    expect(model.producer_name == "stemmark", f"{path.name}: producer {model.producer_name!r}")

    def dims(vi):
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    io = {vi.name: dims(vi) for vi in list(model.graph.input) + list(model.graph.output)}
    meta = {p.key: p.value for p in model.metadata_props}
    print(f"{path.name}: check_model(full_check) ok; ir {model.ir_version}, opset 17, "
          f"{len(model.graph.node)} nodes, {len(model.graph.initializer)} initializers, "
          f"{path.stat().st_size} bytes; io {io}")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return model, io, meta, sess


def pm1(*shape):
    return np.where(RNG.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)


def check_embedder(d):
    _, io, meta, sess = load(d / "embedder.onnx")
    expect(io["magnitude"][0] == "batch" and io["magnitude"][2] == "frames", f"embedder dims {io}")
    bins, bits, keydim = io["magnitude"][1], io["message"][1], io["key"][1]
    bound = float(meta["stemmark.mask_bound"])
    for batch in (1, 3):
        for frames in (360, 17):
            mag = (np.abs(RNG.standard_normal((batch, bins, frames))) * 10.0).astype(np.float32)
            mag[0, :3, :2] = 0.0  # silence must not produce NaN
            (mask,) = sess.run(["mask"], {"magnitude": mag, "message": pm1(batch, bits), "key": pm1(batch, keydim)})
            expect(mask.shape == (batch, bins, frames), f"mask shape {mask.shape}")
            expect(np.isfinite(mask).all(), "mask has non-finite values")
            lo, hi = float(mask.min()), float(mask.max())
            expect(lo >= 1 - bound - 1e-6 and hi <= 1 + bound + 1e-6, f"mask outside band: [{lo}, {hi}]")
            print(f"  embedder batch {batch} frames {frames}: mask {mask.shape} in [{lo:.4f}, {hi:.4f}] "
                  f"(band ±{bound})")
    # The message must reach the mask, or the runtime plumbing could not tell messages apart.
    mag = np.ones((1, bins, 8), np.float32)
    key = pm1(1, keydim)
    a = sess.run(["mask"], {"magnitude": mag, "message": np.ones((1, bits), np.float32), "key": key})[0]
    b = sess.run(["mask"], {"magnitude": mag, "message": -np.ones((1, bits), np.float32), "key": key})[0]
    expect(np.abs(a - b).max() > 1e-4, "message does not affect the mask")


def check_detector(d):
    _, io, _, sess = load(d / "detector.onnx")
    expect(io["audio"][0] == "batch", f"detector dims {io}")
    block, keydim, bits = io["audio"][1], io["key"][1], io["logits"][1]
    for batch in (1, 3):
        audio = (0.1 * RNG.standard_normal((batch, block))).astype(np.float32)
        key = pm1(batch, keydim)
        (logits,) = sess.run(["logits"], {"audio": audio, "key": key})
        expect(logits.shape == (batch, bits), f"logits shape {logits.shape}")
        expect(np.isfinite(logits).all(), "logits non-finite")
        # Batch rows are independent: row 0 alone gives the same logits.
        (one,) = sess.run(["logits"], {"audio": audio[:1], "key": key[:1]})
        expect(np.allclose(one[0], logits[0], atol=1e-4), "batch rows interact")
        print(f"  detector batch {batch}: logits {logits.shape}, |max| {np.abs(logits).max():.3f}")
    (silent,) = sess.run(["logits"], {"audio": np.zeros((1, block), np.float32), "key": pm1(1, keydim)})
    expect(np.isfinite(silent).all(), "silence gives non-finite logits")


def check_separator(d):
    _, io, _, sess = load(d / "separator.onnx")
    expect(io["mix"][0] == "batch" and io["mix"][2] == "length", f"separator dims {io}")
    channels, stems_n = io["mix"][1], io["stems"][1]
    for batch in (1, 3):
        for length in (88200, 1001):
            mix = (0.3 * RNG.standard_normal((batch, channels, length))).astype(np.float32)
            (stems,) = sess.run(["stems"], {"mix": mix})
            expect(stems.shape == (batch, stems_n, channels, length), f"stems shape {stems.shape}")
            err = float(np.abs(stems.sum(axis=1) - mix).max())
            expect(err <= 1e-5, f"stems do not sum to the mix (max error {err})")
            differ = float(np.abs(stems[:, 0] - stems[:, 1]).max())
            expect(differ > 1e-3, "stems are identical")
            print(f"  separator batch {batch} length {length}: stems {stems.shape}, "
                  f"max |sum − mix| {err:.2e}")


def check_ops(d):
    path = d / "ops.onnx"
    if not path.exists():
        print("ops.onnx: absent, skipped")
        return
    model, io, _, sess = load(path)
    batch, time = 2, 16
    x = RNG.standard_normal((batch, 8, time)).astype(np.float32)
    names = [o.name for o in model.graph.output]
    out = dict(zip(names, sess.run(names, {"x": x})))
    sizes = {"batch": batch, "time": time, "flat": 8 * time, "t_down": time // 2, "t_up": time}
    for name, want in io.items():
        if name == "x":
            continue
        shape = tuple(sizes[v] if isinstance(v, str) else v for v in want)
        expect(out[name].shape == shape, f"ops {name}: shape {out[name].shape} != {shape}")
    erf = np.vectorize(math.erf)
    close = {
        "gelu": 0.5 * x * (1 + erf(x / math.sqrt(2))),
        "silu": x / (1 + np.exp(-x)),
        "glu": x[:, :4] / (1 + np.exp(-x[:, 4:])),
        "softmax": np.exp(x) / np.exp(x).sum(-1, keepdims=True),
        "slice": x[:, 1:5:2],
        "split_roundtrip": np.zeros_like(x),
        "reduce_sum": x.sum(2),
        "reshape": x.reshape(batch, -1),
        "misc": np.minimum((np.sqrt(np.abs(x)) + np.exp(-np.abs(x))) / 0.5, 3.0),
    }
    xt = x.transpose(0, 2, 1)
    init = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    mu, var = xt.mean(-1, keepdims=True), xt.var(-1, keepdims=True)
    close["layer_norm"] = (xt - mu) / np.sqrt(var + 1e-5) * init["ln_scale"] + init["ln_bias"]
    close["gemm"] = x.sum(2) @ init["gemm_w"].T
    for name, want in close.items():
        err = float(np.abs(out[name] - want).max())
        expect(err <= 1e-4, f"ops {name}: max error {err}")
    print(f"  ops: {len(names)} outputs with the declared shapes; {len(close)} match NumPy to 1e-4")


def main():
    if len(sys.argv) != 2:
        fail("usage: check_onnx.py DIR")
    d = Path(sys.argv[1])
    print(f"onnx {onnx.__version__}, onnxruntime {ort.__version__}, numpy {np.__version__}")
    check_embedder(d)
    check_detector(d)
    check_separator(d)
    check_ops(d)
    print("all checks passed")


if __name__ == "__main__":
    main()
