"""Compare what two environments made from the same input (``.ci/run``'s second environment).

    compare_envs.py corpus A B     # two make-corpus outputs: same frames, same sidecars
    compare_envs.py dataset A B    # two demo datasets from the same videos: same arrays

A corpus's encoded bytes carry the encoder's version (x264 writes it into the stream, the
MP4 muxer its own fields), so clips are compared by their decoded frames; sidecars and
metadata.csv byte for byte. Datasets are compared array by array and attribute by
attribute, bit for bit (NaN equal to NaN), and normalization_stats.yaml byte for byte.
Prints one line per file and exits 1 on the first kind of difference it finds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import av
import h5py
import numpy as np


def frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def same_arrays(a: object, b: object) -> bool:
    x, y = np.asarray(a), np.asarray(b)
    if x.dtype != y.dtype or x.shape != y.shape:
        return False
    if x.dtype.kind in "fc":
        return bool(np.array_equal(x, y, equal_nan=True)) and x.tobytes() == y.tobytes()
    return bool(np.array_equal(x, y))


def h5_entries(path: Path) -> dict[str, object]:
    """Every dataset and attribute of an H5 file, by path (``group@attribute`` for attributes)."""
    with h5py.File(path) as f:
        entries: dict[str, object] = {f"/@{k}": v for k, v in f.attrs.items()}

        def visit(name: str, obj: h5py.Group | h5py.Dataset) -> None:
            if isinstance(obj, h5py.Dataset):
                entries[name] = obj[()]
            entries.update({f"{name}@{k}": v for k, v in obj.attrs.items()})

        f.visititems(visit)
    return entries


def compare_corpus(a: Path, b: Path) -> list[str]:
    problems = []
    names = sorted(p.name for p in a.iterdir())
    if names != sorted(p.name for p in b.iterdir()):
        return [f"different files: {names} vs {sorted(p.name for p in b.iterdir())}"]
    for name in names:
        if name.endswith(".mp4"):
            fa, fb = frames(a / name), frames(b / name)
            same = len(fa) == len(fb) and all(np.array_equal(x, y) for x, y in zip(fa, fb, strict=True))
            identical = (a / name).read_bytes() == (b / name).read_bytes()
            print(f"{name}: {len(fa)} frames {'the same' if same else 'DIFFER'}" + (", bytes too" if identical else ""))
            if not same:
                problems.append(f"{name}: decoded frames differ")
        elif (a / name).read_bytes() != (b / name).read_bytes():
            problems.append(f"{name}: bytes differ")
    return problems


def compare_dataset(a: Path, b: Path) -> list[str]:
    problems = []
    names = sorted(p.name for p in a.glob("*.hdf5"))
    if not names or names != sorted(p.name for p in b.glob("*.hdf5")):
        return [f"different H5 files: {names} vs {sorted(p.name for p in b.glob('*.hdf5'))}"]
    for name in names:
        ea, eb = h5_entries(a / name), h5_entries(b / name)
        differ = sorted(k for k in ea.keys() | eb.keys() if k not in ea or k not in eb or not same_arrays(ea[k], eb[k]))
        identical = (a / name).read_bytes() == (b / name).read_bytes()
        same = "bytes identical" if identical else "bytes differ"
        print(f"{name}: {len(ea)} arrays and attributes, {len(differ)} differ ({same})")
        problems += [f"{name}: {key}" for key in differ]
    stats = "normalization_stats.yaml"
    if (a / stats).read_bytes() != (b / stats).read_bytes():
        problems.append(f"{stats}: bytes differ")
    else:
        print(f"{stats}: identical")
    return problems


def main() -> int:
    kind, a, b = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    problems = {"corpus": compare_corpus, "dataset": compare_dataset}[kind](a, b)
    for problem in problems:
        print("DIFFERENT:", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
