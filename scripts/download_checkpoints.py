"""Download the released head checkpoints and SAM ViT-L into checkpoints/ under the names the
configs expect, with a progress bar; an interrupted download resumes when run again.

    python scripts/download_checkpoints.py              # every head this project runs, SAM ViT-L
    python scripts/download_checkpoints.py sam_vit_l hg_deepseek_vl_1_3b
    python scripts/download_checkpoints.py --list       # per config: its file, there or not
    python scripts/download_checkpoints.py --lmms       # also the frozen LMMs (Hugging Face cache)

--base-url fetches `<URL>/<file name>` from a mirror instead of the original sources (Google
Drive, dl.fbaipublicfiles.com); --hf-endpoint does the same for the LMMs (e.g. a hub mirror).
Sizes and SHA-256 digests are checked where hg_lmm/utils/downloads.py knows them; for the others
the digest is printed so that it can be added there. Published checkpoints that no config here can
run (Mini-Gemini, HPT) are listed with the reason, and refused with it when named.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from hg_lmm.utils import downloads


def print_list(dest: str, hf_cache: str | None) -> None:
    """One row per table entry: the config that needs it, its file and whether it is there; the
    reasons of the unsupported entries below the table."""
    rows = [("name", "config", "file", "status", "source")]
    for item in downloads.ARTIFACTS:
        config = item.config or "(every U-Net+SAM config)"
        rows.append((item.name, config, item.filename, downloads.status(item, dest), item.source()))
    for model in downloads.hub_models():
        cached = downloads.hub_model_cached(model, hf_cache)
        where = "in the Hugging Face cache" if cached else "not cached (--lmms)"
        rows.append((model.name, model.config, model.repo_id, where, f"hub: {model.repo_id}"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4])
    unsupported = [item for item in downloads.ARTIFACTS if item.unsupported]
    if unsupported:
        print("\nknown but unsupported (never downloaded):")
        for item in unsupported:
            print(f"  {item.name}: {item.unsupported}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    names = [a.name for a in downloads.ARTIFACTS] + [m.name for m in downloads.HUB_MODELS]
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(names)}")
    parser.add_argument("--dir", default="checkpoints", help="destination; default %(default)s")
    parser.add_argument("--list", action="store_true", help="show what is there and exit")
    parser.add_argument("--lmms", action="store_true", help="also download every LMM of the table")
    parser.add_argument("--base-url", help="a mirror serving <URL>/<file name>")
    parser.add_argument("--hf-endpoint", help="a Hugging Face hub mirror for the LMMs")
    parser.add_argument("--hf-cache", help="Hugging Face cache folder (default: its usual one)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    if args.list:
        print_list(args.dir, args.hf_cache)
        return

    hub_names = {m.name for m in downloads.HUB_MODELS}
    wanted_files = [n for n in args.names if n not in hub_names]
    wanted_lmms = [n for n in args.names if n in hub_names]
    try:  # no NAME: every file; LMMs only when named or with --lmms
        files = downloads.artifacts(wanted_files if args.names else None)
        lmms = downloads.hub_models(None if args.lmms else wanted_lmms)
    except downloads.UnsupportedError as error:
        print(f"not downloaded: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    except downloads.DownloadError as error:
        parser.error(str(error))
    failed = []
    for item in files:
        print(f"[{item.name}] {item.description} -> {args.dir}/{item.filename}", flush=True)
        try:
            path = downloads.download(item, args.dir, base_url=args.base_url, quiet=args.quiet)
            print(f"[{item.name}] ok: {path}", flush=True)
        except downloads.DownloadError as error:
            print(f"[{item.name}] FAILED: {error}", flush=True)
            failed.append(item.name)
    for model in lmms:
        print(f"[{model.name}] {model.repo_id} -> Hugging Face cache", flush=True)
        try:
            path = downloads.download_hub_model(
                model, endpoint=args.hf_endpoint, cache_dir=args.hf_cache
            )
            print(f"[{model.name}] ok: {path}", flush=True)
        except downloads.DownloadError as error:
            print(f"[{model.name}] FAILED: {error}", flush=True)
            failed.append(model.name)
    if failed:
        raise SystemExit(f"{len(failed)} download(s) failed: {', '.join(failed)}; run again")


if __name__ == "__main__":
    main()
