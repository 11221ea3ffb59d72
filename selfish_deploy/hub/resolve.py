"""Where a model lives: a local export directory, or a Hub id ``NS/NAME[@REV]`` -> its cached snapshot.

A path that exists locally always wins. Downloads go through ``huggingface_hub`` (``hf_hub_download``,
``snapshot_download``) and its standard cache, so ``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HOME`` and
``HF_HUB_OFFLINE`` (a cached revision resolves without the network) all apply. ``config.json`` is fetched
first, so a repository that is not a selfish-deploy export is refused before its other files are downloaded.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from huggingface_hub import constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import RepositoryNotFoundError

from ..errors import UserError
from ..exportdir import EXPORT_FORMAT
from .errors import hub_errors

log = logging.getLogger(__name__)

# NS/NAME as the Hub spells them (letters, digits, - _ .), then optionally @REV (branch, tag or commit id)
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}")
REQUIRED = ("config.json", "model.safetensors", "vocab.txt")


def parse_repo_id(spec: str, allow_revision: bool = True) -> tuple[str, str | None]:
    """``"NS/NAME@REV"`` -> ``("NS/NAME", "REV")``; ``UserError`` for anything else."""
    repo_id, at, revision = spec.partition("@")
    if not REPO_ID.fullmatch(repo_id) or ".." in repo_id or (at and not revision):
        raise UserError(f"{spec!r} is not a Hub model id (NS/NAME{'[@REVISION]' if allow_revision else ''})")
    if revision and not allow_revision:
        raise UserError(f"{spec!r}: give the repository id without @REVISION here")
    return repo_id, revision or None


def is_repo_id(spec: str) -> bool:
    try:
        parse_repo_id(spec)
        return True
    except UserError:
        return False


def resolve_export(spec: str | Path, revision: str | None = None, *, token: str | bool | None = None,
                   cache_dir: str | Path | None = None, force_download: bool = False,
                   local_files_only: bool = False) -> Path:
    """A local directory as it is; else ``NS/NAME[@REV]`` downloaded to the cache: its snapshot directory."""
    path = Path(spec)
    if path.exists():
        if revision:
            raise UserError(f"{spec} is a local directory: it has no revision {revision!r}")
        return path
    spec = str(spec)
    if not is_repo_id(spec):
        raise UserError(f"export directory not found: {spec} (and it is not a Hub id NS/NAME[@REVISION])")
    repo_id, pinned = parse_repo_id(spec)
    if pinned and revision and pinned != revision:
        raise UserError(f"{spec}: two revisions given ({pinned!r} and revision={revision!r})")
    try:
        return download_export(repo_id, revision or pinned, token=token, cache_dir=cache_dir,
                               force_download=force_download, local_files_only=local_files_only)
    except UserError as e:
        if isinstance(e.__cause__, RepositoryNotFoundError):  # perhaps a mistyped local path
            raise UserError(f"{e}; there is no local directory {spec} either") from e.__cause__
        raise


def download_export(repo_id: str, revision: str | None = None, **kwargs) -> Path:
    """Snapshot of a selfish-deploy export repository at ``revision`` (default ``main``) in the Hub cache."""
    from .. import __version__

    where = f"{constants.ENDPOINT}/{repo_id} (revision {revision or 'main'})"
    common = {"revision": revision, "library_name": "selfish-deploy", "library_version": __version__, **kwargs}
    with hub_errors(where, "config.json"):
        config_file = hf_hub_download(repo_id, "config.json", **common)
    try:
        fmt = json.loads(Path(config_file).read_text(encoding="utf-8")).get("format")
    except (ValueError, AttributeError):
        fmt = None
    if fmt != EXPORT_FORMAT:
        raise UserError(f"{where} is not a selfish-deploy export (config.json format {fmt!r}, expected "
                        f"{EXPORT_FORMAT!r})")
    with hub_errors(where):
        snapshot = Path(snapshot_download(repo_id, **common))
    missing = [name for name in REQUIRED if not (snapshot / name).is_file()]
    if missing:
        raise UserError(f"{where}: file {', '.join(missing)} not found in the repository: not a complete "
                        "selfish-deploy export")
    log.info("resolved %s@%s -> %s", repo_id, revision or "main", snapshot)
    return snapshot
