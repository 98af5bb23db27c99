"""Write the synthetic toy data set (official PNG / RefCOCO / GranD-f / ReasonSeg formats).

python scripts/make_toy_data.py --out data/toy --seed 0
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from hg_lmm.testing.toy import ToyConfig, make_toy_data


def main() -> None:
    defaults = ToyConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/toy", help="output root (default: data/toy)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    for f in dataclasses.fields(ToyConfig):
        if f.name == "seed":
            continue
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            type=type(getattr(defaults, f.name)),
            default=getattr(defaults, f.name),
            help=f"(default: {getattr(defaults, f.name)})",
        )
    args = vars(parser.parse_args())
    out = args.pop("out")
    cfg = ToyConfig(**args)
    tik = time.perf_counter()
    make_toy_data(out, cfg)
    print(f"toy data written to {out} in {time.perf_counter() - tik:.1f} s ({cfg})")


if __name__ == "__main__":
    main()
