"""Third-party notices that a cachepilot user cannot act on, silenced where the trainers run Lightning: its advert
for a cloud logger, and a deprecation inside Lightning's own use of torch's pytree. Everything else Lightning says
(devices used, warnings about the user's own settings) is left as it is."""

from __future__ import annotations

import logging
import warnings

_ADVERT = "💡 Tip: For seamless cloud logging"


class _DropAdvert(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_ADVERT)


def silence_third_party_notices() -> None:
    """Idempotent: each filter is installed once."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropAdvert) for f in logger.filters):
            logger.addFilter(_DropAdvert())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
