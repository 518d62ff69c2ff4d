"""Push an exported folder to the Hugging Face Hub.

The token comes from `HF_TOKEN` or the login cache (`hf auth login`), through
`huggingface_hub.get_token()`; it is handed to `HfApi` and never printed, logged or written.
The endpoint is huggingface_hub's (`HF_ENDPOINT` overrides it, e.g. for a private Hub).
Failures raise `HubPushError` with a message that says what to do; the local folder is never
touched.
"""

from __future__ import annotations

import os
from pathlib import Path


class HubPushError(RuntimeError):
    """The push did not happen (no token, no network, rejected by the Hub)."""


def _endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _is_network_error(err: BaseException) -> bool:
    """Connection/timeout errors of whichever HTTP client huggingface_hub uses (httpx, its
    `httpx2` fork, requests), plain socket errors, and offline mode."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    if isinstance(err, (ConnectionError, TimeoutError, OfflineModeIsEnabled)):
        return True
    for cls in type(err).__mro__:
        package = cls.__module__.split(".")[0]
        if package in ("httpx", "httpx2", "httpcore", "httpcore2") and cls.__name__ in (
            "TransportError", "NetworkError", "TimeoutException"
        ):
            return True
        if package == "requests" and cls.__name__ in ("ConnectionError", "Timeout"):
            return True
    return False


def _scrub(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Create `repo_id` if needed (a model repo) and upload `folder` to it; returns the repo URL.

    private: applies when the repo is created (an existing repo keeps its visibility).
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(folder)
    if not folder.is_dir():
        raise HubPushError(f"nothing to push: {folder} is not a folder")
    token = token or get_token()
    if not token:
        raise HubPushError(
            "no Hugging Face token: set HF_TOKEN or run `hf auth login`, then push again "
            f"(e.g. `hf upload {repo_id} {folder}`)"
        )
    endpoint = _endpoint()
    api = HfApi(endpoint=endpoint, token=token)
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            repo_type="model",
            folder_path=str(folder),
            commit_message=commit_message or "Upload PSA student exported by psa-train",
        )
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        hint = {
            401: "the token was rejected (expired or invalid?)",
            403: "the token may not write to this namespace (needs a write token)",
            404: "repository or namespace not found",
        }.get(status, "the Hub refused the request")
        first_line = _scrub(str(err).splitlines()[0] if str(err) else type(err).__name__, token)
        raise HubPushError(f"push to {repo_id} failed: {hint} (HTTP {status}: {first_line})") from err
    except Exception as err:
        if _is_network_error(err):
            raise HubPushError(
                f"push to {repo_id} failed: cannot reach {endpoint} ({type(err).__name__}); "
                "check the network (or HF_ENDPOINT) and push again"
            ) from err
        raise
    return str(url)
