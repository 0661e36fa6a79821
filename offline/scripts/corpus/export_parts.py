#!/usr/bin/env python3
"""Export one multi-part music21 corpus score as aligned per-part MIDI files.

Usage: export_parts.py list <composer>...        -> JSON list of corpus paths (one per line)
       export_parts.py export <corpus-path> <out-dir> <seed>

`export` writes part_NN.mid for every part plus full.mid (all parts) and meta.json. Every file is
the whole score with the other parts' notes turned into rests, so all files share one tempo map and
one start: rendered separately they stay sample-aligned, and they sum to the render of full.mid.
Instruments are drawn from a General-MIDI palette with `seed`, so the lead is not one timbre.
"""
import copy
import json
import random
import sys

from music21 import corpus, instrument, note, tempo

# Melodic GM programs (0-based) that suit sustained classical lines; drums are never used.
PALETTE = [0, 4, 6, 11, 16, 19, 21, 24, 40, 41, 42, 43, 46, 48, 52, 56, 57, 60, 65, 68, 69, 70, 71, 73, 74]


def list_paths(composers):
    for c in composers:
        for p in corpus.getComposer(c):
            print(str(p))


def mute(part):
    """Turn every note and chord of `part` into a rest of the same length and offset."""
    for n in list(part.recurse().notes):
        r = note.Rest(quarterLength=n.quarterLength)
        n.activeSite.replace(n, r)


def set_program(part, program):
    for old in list(part.recurse().getElementsByClass(instrument.Instrument)):
        old.activeSite.remove(old)
    inst = instrument.Instrument()
    inst.midiProgram = program
    part.insert(0, inst)


def export(path, out, seed):
    score = corpus.parse(path)
    parts = list(score.parts)
    if len(parts) < 2:
        raise SystemExit(f"{path}: {len(parts)} part(s); need at least 2")
    # Scores without a tempo mark would all play at music21's default; pin it explicitly in the
    # first part so every exported file carries the identical tempo map.
    if not score.recurse().getElementsByClass(tempo.MetronomeMark):
        parts[0].insert(0, tempo.MetronomeMark(number=random.Random(seed).choice([60, 72, 84, 96])))
    rng = random.Random(seed)
    programs = rng.sample(PALETTE, len(parts)) if len(parts) <= len(PALETTE) else [rng.choice(PALETTE) for _ in parts]
    for p, prog in zip(parts, programs):
        set_program(p, prog)
    score.write("midi", fp=f"{out}/full.mid")
    for i in range(len(parts)):
        s = copy.deepcopy(score)
        for j, p in enumerate(s.parts):
            if j != i:
                mute(p)
        s.write("midi", fp=f"{out}/part_{i:02d}.mid")
    meta = {
        "parts": [{"index": i, "name": p.partName or f"part {i}", "program": prog} for i, (p, prog) in enumerate(zip(parts, programs))],
        # The top part (soprano, violin I, cantus) carries the melody in this repertoire.
        "lead": 0,
    }
    with open(f"{out}/meta.json", "w") as f:
        json.dump(meta, f)


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "list":
        list_paths(sys.argv[2:])
    elif len(sys.argv) == 5 and sys.argv[1] == "export":
        export(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        raise SystemExit(__doc__)
