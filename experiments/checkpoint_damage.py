"""Random single-bit flips of a checkpoint's metadata: what a load does with each, and the seal's cost.

Saves one ``tiny`` session state after 3 chunks, then flips one random bit of the
session's pointer document or of the generation's sealed metadata, ``--flips`` times
each, and loads it with the session's identity after every flip. Prints, per document,
how many loads were refused and with which error, how many gave back the identical
state, and how many gave another state or an untyped error (both must be 0). Then the
time of one seal against a save and a verified load of the same state (medians, side by
side in one run).

Run: ``python -m experiments.checkpoint_damage --flips 1000``
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import random
import statistics
import tempfile
import time

from kernels.model import StreamingVideoModel
from storage import CheckpointError, CheckpointIdentity, CheckpointStore
from storage.identity import seal

PROMPT = "a red fox running through snow"


def _median_s(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flips", type=int, default=1000, help="flips per metadata document")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.flips < 1:
        parser.error(f"--flips must be >= 1, got {args.flips}")

    model = StreamingVideoModel.from_preset("tiny", device="cpu", weights_seed=0, num_threads=1)
    state = model.new_session(PROMPT, 0)
    for _ in range(3):
        model.step([state])
    root = pathlib.Path(tempfile.mkdtemp(prefix="turboserve-damage-"))
    store = CheckpointStore(root)
    info = store.save("s1", state)
    ident = CheckpointIdentity.of("s1", "tiny", PROMPT, 0)
    docs = {"pointer": root / "s1" / "zarr.json", "generation": root / "s1" / info.generation / "zarr.json"}
    rng = random.Random(args.seed)
    bad = 0
    for name, path in docs.items():
        original = path.read_bytes()
        outcomes: collections.Counter[str] = collections.Counter()
        for _ in range(args.flips):
            data = bytearray(original)
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            path.write_bytes(bytes(data))
            try:
                loaded = store.load("s1", expect=ident)
            except CheckpointError as exc:
                outcomes[type(exc).__name__] += 1
            except Exception as exc:  # noqa: BLE001 - counted: must not happen
                outcomes[f"UNTYPED {type(exc).__name__}"] += 1
                bad += 1
            else:
                same = loaded.equal(state)
                outcomes["identical state" if same else "ANOTHER STATE"] += 1
                bad += not same
            path.write_bytes(original)
        print(f"{name:10s} {args.flips} flips: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))

    attrs = store._root["s1"][info.generation].attrs.asdict()
    doc = {k: v for k, v in attrs.items() if k not in ("digest", "complete")}
    t_save = _median_s(lambda: store.save("s1", state), 20)
    t_load = _median_s(lambda: store.load("s1", expect=ident), 20)
    t_seal = _median_s(lambda: seal(doc), 200)
    print(f"state {state.nbytes / 2**20:.2f} MiB in {len(state.tensors)} tensors: one seal {t_seal * 1e6:.0f} us, "
          f"save {t_save * 1e3:.1f} ms (seal {t_seal / t_save:.3%}), verified load {t_load * 1e3:.1f} ms "
          f"(seal {t_seal / t_load:.3%})")
    print("wrong states or untyped errors:", bad)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
