"""Files fetched from their public source at a pinned revision (a URL with a commit in it), cached on disk.

The package never reads benchmark data or prompts from outside itself: the ru_llm_arena judge prompt and baseline
answers, for example, are `https://raw.githubusercontent.com/<repo>/<commit>/<path>` URLs in the configs. The
first use downloads the file over HTTP (`httpx`) into `$RUTUNE_CACHE` (default `~/.cache/rutune`) under a name
derived from the URL, atomically; later uses read the cached copy. With `sha256` given, a download whose content
differs is rejected. No network and no cached copy: a one-line error naming the URL and the fix (a local path).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from rutune.eval.errors import EvalError
from rutune.rundir import atomic_path

PINNED_ARENA = "https://raw.githubusercontent.com/VikhrModels/ru_llm_arena/501ab65d54bc92789d9a1f974a5841a4aab96b74"


def is_url(ref: str | os.PathLike | None) -> bool:
    return isinstance(ref, str) and ref.startswith(("http://", "https://"))


def cache_dir() -> Path:
    return Path(os.environ.get("RUTUNE_CACHE") or Path.home() / ".cache" / "rutune") / "upstream"


def fetch(url: str, *, sha256: str | None = None, timeout_s: float = 60.0) -> Path:
    """The local cached copy of `url` (downloaded on first use)."""
    name = hashlib.sha256(url.encode()).hexdigest()[:16] + "-" + url.rstrip("/").rsplit("/", 1)[-1]
    target = cache_dir() / name
    if target.is_file():
        return target
    import httpx

    try:
        response = httpx.get(url, timeout=timeout_s, follow_redirects=True)
        response.raise_for_status()
    except httpx.HTTPError as e:
        raise EvalError(f"{url}: cannot download ({type(e).__name__}: {str(e)[:120]}); without network, download "
                        f"it elsewhere and pass the local path instead") from None
    body = response.content
    if sha256 and hashlib.sha256(body).hexdigest() != sha256:
        raise EvalError(f"{url}: downloaded content does not match the pinned sha256 {sha256[:12]}…")
    with atomic_path(target) as tmp:
        tmp.write_bytes(body)
    return target


def local(ref: str | os.PathLike) -> Path:
    """A local path for `ref`: the cached download of a URL, else the path itself."""
    return fetch(str(ref)) if is_url(ref) else Path(ref).expanduser()
