"""``from_pretrained`` / ``save_pretrained`` / ``push_to_hub`` for a model class built from an export directory.

The ``huggingface_hub`` ``ModelHubMixin`` convention (the same three names and arguments), written out rather
than inherited: the mixin's ``__new__`` records ``__init__`` arguments as a JSON config and its
``from_pretrained`` downloads ``config.json`` on its own and maps its keys onto ``__init__`` parameters, while
for us the directory *is* the model and its ``config.json`` is the export's. The contract with the class is
small: a classmethod ``load(local_dir, **kwargs)`` and an attribute ``exported`` (``ExportedModel``, ``.path``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from ..exportdir import MANIFEST_FILE, export_files, save_export, verify_manifest, write_manifest
from .resolve import resolve_export

log = logging.getLogger(__name__)


class HubMixin:
    """Adds Hub loading and saving to a class with ``load(path, **kwargs)`` and ``exported``."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *, revision: str | None = None,
                        token: str | bool | None = None, cache_dir: str | Path | None = None,
                        force_download: bool = False, local_files_only: bool = False, **load_kwargs):
        """Load from a local export directory or a Hub id ``NS/NAME`` (``@REV`` or ``revision=`` to pin).

        ``load_kwargs`` (``device=...`` and the like) go to ``cls.load``. A local path always wins.
        """
        path = resolve_export(pretrained_model_name_or_path, revision, token=token, cache_dir=cache_dir,
                              force_download=force_download, local_files_only=local_files_only)
        return cls.load(path, **load_kwargs)

    def save_pretrained(self, save_directory: str | Path, *, repo_id: str | None = None, push_to_hub: bool = False,
                        **push_to_hub_kwargs) -> str | None:
        """Write the export directory (a byte copy of the one it was loaded from); push it if asked.

        Returns the commit URL when pushed, else ``None`` (as ``ModelHubMixin.save_pretrained``).
        """
        out = Path(save_directory)
        source = getattr(self.exported, "path", None)
        if source is not None and Path(source).resolve() != out.resolve():
            verify_manifest(source)  # unchanged since it was loaded
            names = export_files(source) + ([MANIFEST_FILE] if (Path(source) / MANIFEST_FILE).is_file() else [])
            for name in names:
                (out / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(Path(source) / name, out / name)  # follows the Hub cache's symlinks
        elif source is None:  # built in memory: write it, with a card and a manifest
            from ..export.writer import size_report
            from .card import write_card

            save_export(self.exported, out)
            write_card(out, self.exported, size_report(self.exported, out))
            write_manifest(out)
        log.info("saved the export directory to %s", out)
        if push_to_hub:
            return self.push_to_hub(repo_id or out.name, **push_to_hub_kwargs)
        return None

    def push_to_hub(self, repo_id: str, *, commit_message: str | None = None, private: bool | None = None,
                    token: str | None = None, branch: str | None = None) -> str:
        """Upload the model's export directory to ``repo_id`` in one commit; returns the commit URL."""
        from .push import push_export

        with tempfile.TemporaryDirectory(prefix="selfish-push-") as tmp:
            self.save_pretrained(tmp)
            commit = push_export(tmp, repo_id, revision=branch, private=private, token=token,
                                 commit_message=commit_message)
        return commit.commit_url
