"""Hugging Face Hub ids: telling them from local paths, and failing fast when the hub is out of reach.

The hub libraries retry an unreachable endpoint for about 25 s before giving up, and then say
nothing about how to get the files. Before any download, adarank checks in one short TCP connect
whether the endpoint answers; when it does not (or ``HF_HUB_OFFLINE=1``), a repository that is not
in the local cache is refused at once with the command that pre-downloads it, and a cached one is
loaded from the cache without touching the network.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

LOCAL_PREFIXES = ("/", "./", "../", "~")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
PROBE_SECONDS = 3.0


def looks_local(value: str) -> bool:
    """Whether ``value`` is written as a path (starts with /, ./, ../ or ~), so it must exist here."""
    return value.startswith(LOCAL_PREFIXES) or value in (".", "..")


def is_hub_id(value: str) -> bool:
    """Whether ``value`` names a hub repository (``org/name`` or ``name``) rather than a local path.
    An existing local path always wins."""
    return not looks_local(value) and not Path(value).exists() and bool(_HUB_ID.match(value))


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


_PROBED: dict[str, str | None] = {}


def offline_reason(timeout: float = PROBE_SECONDS) -> str | None:
    """Why the hub cannot be used now (``HF_HUB_OFFLINE`` set, or its endpoint does not accept a
    connection within ``timeout`` seconds), or None when it can. One probe per endpoint per process."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var}={os.environ[var]} is set"
    if endpoint() not in _PROBED:
        url = urlparse(endpoint())
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            with socket.create_connection((url.hostname or "", port), timeout=timeout):
                _PROBED[endpoint()] = None
        except OSError as err:
            _PROBED[endpoint()] = f"{endpoint()} cannot be reached ({err.strerror or err})"
    return _PROBED[endpoint()]


def hub_cache() -> Path:
    """The hub's download cache (``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    return Path(home) / "hub"


def is_cached(repo_id: str, repo_type: str) -> bool:
    """Whether a snapshot of ``repo_id`` (``model`` or ``dataset``) is in the local hub cache."""
    folder = hub_cache() / f"{repo_type}s--{repo_id.replace('/', '--')}" / "snapshots"
    return folder.is_dir() and any(folder.iterdir())


def unreachable_problem(key: str, repo_id: str, repo_type: str) -> str | None:
    """The problem with using hub id ``repo_id`` for config ``key`` now: None when the hub answers or
    the repository is cached; otherwise why, and how to pre-download it."""
    if is_cached(repo_id, repo_type):
        return None
    reason = offline_reason()
    if reason is None:
        return None
    flag = " --repo-type dataset" if repo_type == "dataset" else ""
    return (
        f"{key} `{repo_id}` is a hub {repo_type} id, it is not in the local cache ({hub_cache()}), and {reason}. "
        f"Pre-download it where there is network: `hf download {repo_id}{flag}`, then copy that cache here "
        f"(or set HF_HOME to it); or give a local {'folder' if repo_type == 'model' else 'file or folder'}."
    )


@contextmanager
def offline_if_unreachable() -> Iterator[bool]:
    """While inside, the hub libraries read their caches only when the hub is out of reach (no 25 s of
    retries first); yields whether they were switched offline."""
    if offline_reason() is None:
        yield False
        return
    import datasets.config
    import huggingface_hub.constants

    saved = (huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE)
    huggingface_hub.constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield True
    finally:
        huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved
