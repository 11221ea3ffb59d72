"""``selfish-push EXPORT_DIR --repo-id NS/NAME``: upload an export directory to the Hub in one commit.

The directory is checked first (a valid export whose files match its manifest), so nothing broken reaches
the network. The repository is created when needed, and the commit mirrors the directory: remote files it
no longer has (an old ``model.onnx``) are deleted in the same commit, ``.gitattributes`` is kept.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from huggingface_hub import CommitInfo, HfApi, constants

from .. import cli
from ..exportdir import load_export
from .errors import hub_errors
from .resolve import parse_repo_id

log = logging.getLogger(__name__)


def push_export(export_dir: str | Path, repo_id: str, revision: str | None = None, private: bool | None = None,
                token: str | None = None, commit_message: str | None = None) -> CommitInfo:
    """Check ``export_dir``, create ``repo_id`` (and branch ``revision``) if needed, upload; the commit."""
    export_dir = Path(export_dir)
    parse_repo_id(repo_id, allow_revision=False)
    model = load_export(export_dir)  # raises UserError before any request
    api = HfApi(token=token, library_name="selfish-deploy")
    where = f"{constants.ENDPOINT}/{repo_id}"
    with hub_errors(where):
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(url.repo_id, branch=revision, exist_ok=True)
        message = commit_message or (f"selfish-export: {model.model_config.arch}, "
                                     f"density {float(model.config.get('density', 1.0)):.3f}")
        commit = api.upload_folder(repo_id=url.repo_id, folder_path=export_dir, revision=revision,
                                   commit_message=message, delete_patterns=["*"],
                                   ignore_patterns=["*.tmp", ".*", "**/.*"])
    log.info("pushed %s to %s (revision %s): %s", export_dir, url.repo_id, revision or "main", commit.commit_url)
    return commit


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfish-push", description="Upload an export directory to a Hugging Face "
                                "Hub model repository in one commit (the repository is created if needed).")
    p.add_argument("export_dir", help="directory written by selfish-export")
    p.add_argument("--repo-id", required=True, metavar="NS/NAME", help="model repository to push to")
    p.add_argument("--revision", metavar="BRANCH", help="branch to commit to, created from main if missing "
                   "(default: main)")
    p.add_argument("--private", action="store_true", help="create the repository as private (an existing "
                   "repository keeps its visibility)")
    p.add_argument("--token", help="Hub token with write access (default: $HF_TOKEN or the stored login)")
    p.add_argument("--commit-message", metavar="M", help="commit summary (default: arch and density)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def body(args: argparse.Namespace) -> int:
    commit = push_export(args.export_dir, args.repo_id, args.revision, args.private or None, args.token,
                         args.commit_message)
    sys.stdout.write(commit.oid + "\n")  # the commit id, to pin: selfish-serve --model NS/NAME@<oid>
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(body, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
