"""Whether downloads can work here: decided once per run by its entry point, then obeyed by every step.

ImageNet weights (Keras applications, InceptionV3 for FID) are downloaded by name. On a machine
without internet each try costs a DNS failure and a frightening "Downloading … failed" line, once per
process. `decide()` asks the network once — can it reach the host the weights come from? — and puts
the answer in the environment (`MEDSYNTH_OFFLINE=1` or `0`), so the run's subprocesses (kfp.local
tasks) inherit it; `known_offline()` is what library code asks before a download: true only when the
answer is known to be "no", so a cluster's pods, where nobody decided, still download.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass

from medsynth.errors import ConfigError

OFFLINE_ENV = "MEDSYNTH_OFFLINE"
# Keras' ImageNet weights live here; any HTTP answer, even an error status, means it can be reached.
PROBE_URL = "https://storage.googleapis.com/"
PROBE_TIMEOUT_S = 3.0
_YES, _NO = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class Network:
    online: bool
    why: str  # how it was decided, for the one line a run says


def _setting() -> bool | None:
    """MEDSYNTH_OFFLINE as True (offline), False (online) or None (not set)."""
    value = os.environ.get(OFFLINE_ENV, "").strip().lower()
    if not value:
        return None
    if value in _YES + _NO:
        return value in _YES
    raise ConfigError(f"{OFFLINE_ENV}={value!r}: use 1 (no downloads) or 0 (download as needed)")


def known_offline() -> bool:
    """True when this run has been told, or has found, that there is no network: skip downloads."""
    return _setting() is True


def probe(url: str = PROBE_URL, timeout: float = PROBE_TIMEOUT_S) -> Network:
    """One HEAD request (through the proxy the environment names, as downloads would go)."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        pass  # the server answered
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return Network(False, f"{url} cannot be reached: {reason}")
    return Network(True, f"{url} answers")


def decide() -> Network:
    """This run's answer: MEDSYNTH_OFFLINE if set, else one probe; exported for the run's subprocesses."""
    setting = _setting()
    if setting is None:
        found = probe()
    else:
        found = Network(not setting, f"{OFFLINE_ENV}={os.environ[OFFLINE_ENV].strip()}")
    os.environ[OFFLINE_ENV] = "0" if found.online else "1"
    return found


def describe(found: Network) -> str:
    """The one line a run says about it."""
    if found.online:
        return f"network: online ({found.why}); ImageNet weights are downloaded when a step needs them"
    return (f"network: offline ({found.why}); no downloads are tried: the FID/KID metrics use random "
            f"InceptionV3 weights, the *_efflite0 ones the ImageNet weights that ship "
            f"({OFFLINE_ENV}=0 to try anyway)")
