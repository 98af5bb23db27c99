"""Released checkpoints: where each comes from, the file name the configs expect, and a download
that shows progress, resumes a partial file and checks the result.

The table (`ARTIFACTS`) drives everything: each entry names its source (a Google Drive file id or
a URL), its file under `checkpoints/`, the config that uses it, and, once known, its size and
SHA-256. It lists every published head checkpoint of HG-LMM and F-LMM, including those this
project cannot run: such an entry carries the reason (`unsupported`), is shown by `--list` and is
refused, with that reason, when asked for. Downloads go through
`gdown` (Google Drive's confirmation pages, a progress bar, resume with checked byte ranges); the
frozen LMMs come from the Hugging Face hub through `huggingface_hub` into its own cache, where the
configs' hub ids then resolve offline.

A download lands in `<dest>/.partial/` first and only gets its final name once its size and hash
(when the table knows them) match, so a file under the expected name is always complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

PARTIAL_DIR = ".partial"


class DownloadError(RuntimeError):
    """A download that failed or gave the wrong file; the message says what to do."""


@dataclass(frozen=True)
class Artifact:
    """One released file.

    Fields:
      name: the key on the command line.
      filename: its name under the checkpoints folder (what the configs and README use).
      description: what it is.
      gdrive_id: a Google Drive file id, or
      url: a direct URL.
      size: its size in bytes, when known (checked after the download).
      sha256: its SHA-256 hex digest, when known (checked after the download).
      config: the config that uses it (relative to the repo root).
      unsupported: why no config here can run it (None when one can); such an entry is listed,
        never downloaded.
    """

    name: str
    filename: str
    description: str
    gdrive_id: str | None = None
    url: str | None = None
    size: int | None = None
    sha256: str | None = None
    config: str | None = None
    unsupported: str | None = None

    def source(self, base_url: str | None = None) -> str:
        """The URL to fetch: `<base_url>/<filename>` for a mirror, else the original source."""
        if base_url:
            return f"{base_url.rstrip('/')}/{self.filename}"
        if self.gdrive_id:
            return f"https://drive.google.com/uc?id={self.gdrive_id}"
        if self.url:
            return self.url
        raise DownloadError(f"{self.name} has no source in the table")


@dataclass(frozen=True)
class HubModel:
    """A frozen LMM on the Hugging Face hub (what the configs' `model_path` names)."""

    name: str
    repo_id: str
    config: str


_GDRIVE = "(Google Drive)"
_HPT = (
    "HPT's model code is published only on the Hugging Face hub (loaded with "
    "trust_remote_code=True), so this project cannot implement it faithfully offline; see "
    "checkpoints/README.md for what support would need"
)


def _head(
    name: str, config: str, gdrive_id: str, what: str, unsupported: str | None = None
) -> Artifact:
    """A head checkpoint named after its config (`checkpoints/<config stem>.pth`)."""
    return Artifact(
        name=name,
        filename=Path(config).stem + ".pth",
        description=f"{what} {_GDRIVE}",
        gdrive_id=gdrive_id,
        config=config,
        unsupported=unsupported,
    )


# Head checkpoints, each under the name of the config it belongs to.
# - HG-LMM's README (github WenjieLi2008/HG-LMM at 7431b2f) publishes the three HG-head files.
# - F-LMM's README (github wusize/F-LMM) publishes ten U-Net+SAM files; the same three DeepSeek-VL
#   and LLaVA-1.5 files were linked from an earlier HG-LMM README.
# No head's size or hash is published; `download` prints both so that they can be added here.
# SAM ViT-L's size and SHA-256 are the ones listed alongside the official file (its name carries
# its MD5 prefix, 0b3195).
ARTIFACTS: tuple[Artifact, ...] = (
    _head(
        "hg_deepseek_vl_1_3b",
        "configs/deepseek_vl/hg_frozen_deepseek_vl_1_3b_chat_refcoco_png.py",
        "1kDZnM1UREePvdfnPB5RoC0e4FNxxuaWH",
        "HG head for DeepSeek-VL-1.3B-chat",
    ),
    _head(
        "hg_deepseek_vl_7b",
        "configs/deepseek_vl/hg_frozen_deepseek_vl_7b_chat_refcoco_png.py",
        "15X73eHgj25g6SzvHPM0P3JSdGMQIKPIr",
        "HG head for DeepSeek-VL-7B-chat",
    ),
    _head(
        "hg_llava_1_5_7b",
        "configs/llava/hg_frozen_llava_1_5_vicuna_7b_refcoco_png.py",
        "1k5Jp3iEoxKMASBI2vm1jPaV8uHTEwL6w",
        "HG head for LLaVA-1.5-7B (key layout unverified, see checkpoints/README.md)",
    ),
    _head(
        "deepseek_vl_1_3b",
        "configs/deepseek_vl/frozen_deepseek_vl_1_3b_chat_unet_sam_l_refcoco_png.py",
        "1UXcjJrrpTm1bNphvPNjvol9gUfvzNbjA",
        "U-Net+SAM head (F-LMM) for DeepSeek-VL-1.3B-chat",
    ),
    _head(
        "deepseek_vl_7b",
        "configs/deepseek_vl/frozen_deepseek_vl_7b_chat_unet_sam_l_refcoco_png.py",
        "1LOwIAYVyR51e34ksV9jz-GGiFfmkZLj_",
        "U-Net+SAM head (F-LMM) for DeepSeek-VL-7B-chat",
    ),
    _head(
        "llava_1_5_7b",
        "configs/llava/frozen_llava_1_5_vicuna_7b_unet_sam_l_refcoco_png.py",
        "1opjFe15B5L5JJ78gE_FsXvDnwSlwSHhh",
        "U-Net+SAM head (F-LMM) for LLaVA-1.5-7B",
    ),
    _head(
        "llava_next_vicuna_7b",
        "configs/llava_next/frozen_llava_next_vicuna_7b_unet_sam_l_refcoco_png.py",
        "1N-olLqhZdPEySt8Asu2cvLJBaL1VHTqa",
        "U-Net+SAM head (F-LMM) for LLaVA-NeXT-Vicuna-7B",
    ),
    _head(
        "llava_next_mistral_7b",
        "configs/llava_next/frozen_llava_next_mistral_7b_unet_sam_l_refcoco_png.py",
        "13rHaEZ62Q-VX5iKhOQnlm4yH1TMOBalH",
        "U-Net+SAM head (F-LMM) for LLaVA-NeXT-Mistral-7B",
    ),
    _head(
        "mgm_gemma_2b",
        "configs/mgm/frozen_mgm_gemma_2b_unet_sam_l_refcoco_png.py",
        "13wHk-dHa4in1rfIRzKCf-xEHwhaCz_6Y",
        "U-Net+SAM head (F-LMM) for Mini-Gemini-2B (Gemma)",
    ),
    _head(
        "mgm_vicuna_7b",
        "configs/mgm/frozen_mgm_vicuna_7b_unet_sam_l_refcoco_png.py",
        "1Gg57bLJfx2zvYQyyE7Fjfw3hCq9ucVyN",
        "U-Net+SAM head (F-LMM) for Mini-Gemini-7B",
    ),
    _head(
        "mgm_vicuna_7b_hd",
        "configs/mgm/frozen_mgm_vicuna_7b_hd_unet_sam_l_refcoco_png.py",
        "1CDRI1l0FdTra7EZH_NNEha_QfA2cdbYb",
        "U-Net+SAM head (F-LMM) for Mini-Gemini-7B-HD",
    ),
    _head(
        "hpt_air",
        "configs/hpt/frozen_hpt_air_unet_sam_l_refcoco_png.py",
        "1_gU4olEjsYvBvcq6yWGklSxNAv-Yz44T",
        "U-Net+SAM head (F-LMM) for HPT-Air",
        unsupported=_HPT,
    ),
    _head(
        "hpt_air_1_5",
        "configs/hpt/frozen_hpt_air_1_5_unet_sam_l_refcoco_png.py",
        "1Q-asMx7C3onXnmxqEZzecMHHCccqkzaP",
        "U-Net+SAM head (F-LMM) for HPT-Air-1.5",
        unsupported=_HPT,
    ),
    Artifact(
        name="sam_vit_l",
        filename="sam_vit_l_0b3195.pth",
        description="segment-anything ViT-L, the refiner of every U-Net+SAM config",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        size=1_249_524_607,
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    ),
)

HUB_MODELS: tuple[HubModel, ...] = (
    HubModel(
        name="lmm_deepseek_vl_1_3b",
        repo_id="deepseek-ai/deepseek-vl-1.3b-chat",
        config="configs/_base_/models/deepseek_vl_1_3b_chat.py",
    ),
    HubModel(
        name="lmm_deepseek_vl_7b",
        repo_id="deepseek-ai/deepseek-vl-7b-chat",
        config="configs/_base_/models/deepseek_vl_7b_chat.py",
    ),
    HubModel(
        name="lmm_llava_1_5_7b",
        repo_id="llava-hf/llava-1.5-7b-hf",
        config="configs/_base_/models/llava_1_5_vicuna_7b.py",
    ),
    HubModel(
        name="lmm_llava_next_vicuna_7b",
        repo_id="llava-hf/llava-v1.6-vicuna-7b-hf",
        config="configs/_base_/models/llava_next_vicuna_7b.py",
    ),
    HubModel(
        name="lmm_llava_next_mistral_7b",
        repo_id="llava-hf/llava-v1.6-mistral-7b-hf",
        config="configs/_base_/models/llava_next_mistral_7b.py",
    ),
    HubModel(
        name="lmm_mgm_2b",
        repo_id="YanweiLi/MGM-2B",
        config="configs/_base_/models/mgm_gemma_2b.py",
    ),
    HubModel(
        name="lmm_mgm_7b",
        repo_id="YanweiLi/MGM-7B",
        config="configs/_base_/models/mgm_vicuna_7b.py",
    ),
    HubModel(
        name="lmm_mgm_7b_hd",
        repo_id="YanweiLi/MGM-7B-HD",
        config="configs/_base_/models/mgm_vicuna_7b_hd.py",
    ),
    # The two towers every MGM config loads as F-LMM does (`clip_path`, `convnext_path`).
    HubModel(
        name="lmm_mgm_clip_l_336",
        repo_id="openai/clip-vit-large-patch14-336",
        config="configs/_base_/models/mgm_vicuna_7b.py",
    ),
    HubModel(
        name="lmm_mgm_convnext_l_320",
        repo_id="laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup",
        config="configs/_base_/models/mgm_vicuna_7b.py",
    ),
)


def _by_name(items: Iterable, names: Sequence[str], what: str) -> list:
    table = {item.name: item for item in items}
    unknown = [n for n in names if n not in table]
    if unknown:
        raise DownloadError(f"unknown {what} {unknown}; choose from {sorted(table)}")
    return [table[n] for n in names]


class UnsupportedError(DownloadError):
    """A known checkpoint that no config of this project can run; the message says why."""


def artifacts(names: Sequence[str] | None = None) -> list[Artifact]:
    """The table's entries named `names`; None: every entry a config here can run.

    Raises `UnsupportedError` naming each unsupported entry asked for and why it cannot run.
    """
    if names is None:
        return [a for a in ARTIFACTS if a.unsupported is None]
    chosen = _by_name(ARTIFACTS, names, "checkpoint")
    refused = [a for a in chosen if a.unsupported is not None]
    if refused:
        raise UnsupportedError(
            "; ".join(
                f"{a.name} is a known checkpoint that cannot run here: {a.unsupported}"
                for a in refused
            )
        )
    return chosen


def hub_models(names: Sequence[str] | None = None) -> list[HubModel]:
    """The LMMs named `names` (all when None)."""
    return list(HUB_MODELS) if names is None else _by_name(HUB_MODELS, names, "LMM")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def file_problem(artifact: Artifact, path: Path, sha256: str | None = None) -> str | None:
    """What is wrong with `path` as `artifact` (size or SHA-256 not the table's), or None.

    `sha256` is the file's digest when already computed (during the download); otherwise it is
    computed here, and only when the table knows the expected one.
    """
    size = path.stat().st_size
    if artifact.size is not None and size != artifact.size:
        return f"{path} has {size:,} bytes, but {artifact.name} has {artifact.size:,}"
    if artifact.sha256 is not None:
        got = sha256 or file_sha256(path)
        if got != artifact.sha256:
            return f"{path} has SHA-256 {got}, but {artifact.name} has {artifact.sha256}"
    return None


def partial_files(artifact: Artifact, dest: str | os.PathLike) -> list[Path]:
    """Partial downloads of `artifact` waiting to be resumed (gdown's `<name>*.part`)."""
    folder = Path(dest) / PARTIAL_DIR
    return sorted(folder.glob(f"{artifact.filename}*.part")) if folder.is_dir() else []


def status(artifact: Artifact, dest: str | os.PathLike) -> str:
    """One line on what is on disk: present (size, whether it checks out), partial, or missing;
    "unsupported" for an entry no config here can run (what is on disk does not matter then)."""
    if artifact.unsupported is not None:
        return "unsupported (see below)"
    path = Path(dest) / artifact.filename
    if path.is_file():
        size = path.stat().st_size
        if artifact.size is not None and size != artifact.size:
            return f"WRONG SIZE {size:,} B (expected {artifact.size:,}); delete and download"
        checked = "size checked" if artifact.size is not None else "size not published"
        return f"present, {size / 1e6:,.1f} MB ({checked})"
    parts = partial_files(artifact, dest)
    if parts:
        done = sum(p.stat().st_size for p in parts)
        return f"partial, {done / 1e6:,.1f} MB so far (run again to resume)"
    return "missing"


def download(
    artifact: Artifact,
    dest: str | os.PathLike,
    *,
    base_url: str | None = None,
    quiet: bool = False,
    timeout: float | None = 60.0,
    retries: int = 3,
) -> Path:
    """Fetch one artifact to `<dest>/<filename>` (skipped when it is already there and checks out).

    Arguments:
      artifact: the table entry.
      dest: the checkpoints folder.
      base_url: a mirror that serves `<base_url>/<filename>` (instead of the original source).
      quiet: no progress bar.
      timeout: seconds to wait for the server between bytes.
      retries: extra attempts after a network error; each resumes where the last stopped.

    Returns:
      The path of the checked file. Raises `DownloadError` on a failed or wrong download; a
      partial file is kept in `<dest>/.partial/` and the next call resumes it.
    """
    import gdown

    if artifact.unsupported is not None:
        raise UnsupportedError(f"{artifact.name} cannot run here: {artifact.unsupported}")
    dest = Path(dest)
    final = dest / artifact.filename
    if final.is_file():
        problem = file_problem(artifact, final)
        if problem:
            raise DownloadError(f"{problem}: it is incomplete or another file; delete it first")
        logger.info("%s: %s is already there", artifact.name, final)
        return final
    staging = dest / PARTIAL_DIR
    staging.mkdir(parents=True, exist_ok=True)
    target = staging / artifact.filename
    url = artifact.source(base_url)
    hasher = hashlib.sha256()
    # gdown returns at once when the staged file is complete (a run stopped before checking it);
    # that file is then hashed from disk instead of during the transfer.
    completed_before = target.is_file()
    try:
        gdown.download(
            url=url,
            output=str(target),
            quiet=quiet,
            resume=True,
            hasher=hasher,
            timeout=timeout,
            retries=retries,
            use_cookies=artifact.gdrive_id is not None and not base_url,
        )
    except Exception as error:  # gdown's and requests' errors alike
        kept = partial_files(artifact, dest)
        hint = f"; {kept[0]} is kept, run again to resume" if kept else ""
        raise DownloadError(
            f"downloading {artifact.name} from {url} failed: {error}{hint}"
        ) from error
    digest = file_sha256(target) if completed_before else hasher.hexdigest()
    problem = file_problem(artifact, target, digest)
    if problem:
        target.unlink()
        raise DownloadError(
            f"{problem}; the download was deleted. Run again; if it repeats, the source serves "
            "another file than the table describes"
        )
    os.replace(target, final)
    if artifact.size is None or artifact.sha256 is None:
        size = final.stat().st_size
        logger.warning(
            "%s: %d bytes, SHA-256 %s; add them to ARTIFACTS (hg_lmm/utils/downloads.py) so that "
            "later downloads are checked",
            artifact.name,
            size,
            digest,
        )
    return final


def download_hub_model(
    model: HubModel, *, endpoint: str | None = None, cache_dir: str | None = None
) -> Path:
    """Fetch an LMM repo into the Hugging Face cache (resumable), where `from_pretrained` with the
    configs' hub id finds it, also offline.

    Arguments:
      model: the table entry.
      endpoint: a hub mirror (default: huggingface.co, or $HF_ENDPOINT).
      cache_dir: another cache folder (default: the Hugging Face cache, $HF_HUB_CACHE).

    Returns:
      The snapshot folder.
    """
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id=model.repo_id, endpoint=endpoint, cache_dir=cache_dir)
    except Exception as error:  # the hub client's many error types alike
        raise DownloadError(f"downloading {model.repo_id} failed: {error}; run again") from error
    return Path(folder)


def hub_model_cached(model: HubModel, cache_dir: str | None = None) -> bool:
    """Whether the LMM's `config.json` is in the Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(model.repo_id, "config.json", cache_dir=cache_dir)
    return isinstance(found, str)  # a path; None or a "known missing" marker otherwise


__all__ = [
    "ARTIFACTS",
    "HUB_MODELS",
    "Artifact",
    "DownloadError",
    "HubModel",
    "UnsupportedError",
    "artifacts",
    "file_problem",
    "download",
    "download_hub_model",
    "file_sha256",
    "hub_model_cached",
    "hub_models",
    "partial_files",
    "status",
]
