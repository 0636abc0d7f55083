"""Files fetched over the network, checked against the checksum their publisher gives: a file is kept only where its
checksum matches, and never half-written (it is downloaded beside its target, then renamed).  The one home of
downloading for datasets (:mod:`harness.data.downloads`) and teachers (:mod:`harness.results.weights`)."""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

USER_AGENT = "okd-harness"  # some hosts refuse Python's default agent
TIMEOUT_S = 60


class FetchError(RuntimeError):
    """A download that failed or did not match its checksum; the message is one line and names what was tried."""


def cache_folder() -> Path:
    """Where the harness keeps what it downloads: ``$HARNESS_CACHE``, else ``$XDG_CACHE_HOME/okd-harness``, else
    ``~/.cache/okd-harness``."""
    if os.environ.get("HARNESS_CACHE"):
        return Path(os.environ["HARNESS_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "okd-harness"


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(urls: list[str] | tuple[str, ...], target: Path, digest: str, algorithm: str = "sha256") -> Path:
    """``target``, fetched from the first of ``urls`` that answers with a file whose ``algorithm`` checksum is
    ``digest``.  A file already there with that checksum is kept as it is.  A download whose checksum differs is
    deleted and the next address tried; where none gives the file, one line names each address and what it gave."""
    digest = digest.lower()
    if target.is_file() and file_digest(target, algorithm) == digest:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tried = []
    for url in urls:
        fd, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:  # closed on every way out, a malformed address's ValueError too
                request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
                with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
            got = file_digest(partial, algorithm)
            if got != digest:
                tried.append(f"{url} gave a file whose {algorithm} is {got}, not the published {digest}: it was "
                             "not kept")
                continue
            os.replace(partial, target)
            return target
        except (OSError, urllib.error.URLError, ValueError) as e:  # ValueError: a malformed address
            reason = getattr(e, "reason", None) or e
            tried.append(f"{url}: {type(e).__name__}: {' '.join(str(reason).split())}")
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
    raise FetchError(f"cannot download {target.name}: " + "; ".join(tried or ["no address to fetch it from"]))
