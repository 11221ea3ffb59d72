"""``huggingface_hub``'s exceptions as one-line ``UserError`` messages (exit 2), in one place."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ..errors import UserError

try:  # the HTTP library under huggingface_hub 2.x; its errors are not OSErrors
    from httpx2 import HTTPError as TransportError
except ImportError:  # pragma: no cover - other huggingface_hub versions
    TransportError = OSError


def first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return (lines[0] if lines else type(e).__name__).rstrip(".")


@contextmanager
def hub_errors(where: str, filename: str | None = None) -> Iterator[None]:
    """Turn what a Hub call raises into ``UserError("<where>: <what went wrong>")``; ``filename``: the file
    asked for, named when it is missing."""
    try:
        yield
    except GatedRepoError as e:
        raise UserError(f"{where}: the repository is gated; accept its terms and set HF_TOKEN ({first_line(e)})") \
            from e
    except RepositoryNotFoundError as e:
        raise UserError(f"{where}: repository not found (or private: set HF_TOKEN or pass --token)") from e
    except RevisionNotFoundError as e:
        raise UserError(f"{where}: revision not found (a branch, tag or full commit id)") from e
    except RemoteEntryNotFoundError as e:
        what = f"file {filename}" if filename else "a file"
        raise UserError(f"{where}: {what} not found in the repository ({first_line(e)})") from e
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        raise UserError(f"{where}: not in the local cache and the Hub cannot be reached "
                        f"(offline: HF_HUB_OFFLINE; {first_line(e)})") from e
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        raise UserError(f"{where}: the Hub answered HTTP {status}: {first_line(e)}") from e
    except HFValidationError as e:
        raise UserError(f"{where}: {first_line(e)}") from e
    except (TransportError, OSError) as e:
        raise UserError(f"{where}: cannot reach the Hub: {type(e).__name__}: {first_line(e)}") from e
