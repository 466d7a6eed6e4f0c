"""The baseline of issue 7 item 3: the most trivial kopf operator there is.

One ``@kopf.on.create`` handler on a throwaway CRD (``benchthings.bench.chainop.dev``,
created and deleted by ``bench/operator.py``) that sets ``status.done = true`` — kopf
merges the handler's status patch with its own bookkeeping (progress and the
last-handled-configuration annotation). Run it like chainop::

    python -m bench.operator_kopf NAMESPACE   (not by path: bench/operator.py would shadow
    the standard library's operator module)

Everything kopf offers is left at its defaults except what would make the comparison
unfair to kopf: no Events posted for the handler's success (chainop posts none either)
and no peering (chainop runs standalone too).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import kopf

GROUP = "bench.chainop.dev"
VERSION = "v1"
PLURAL = "benchthings"


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.enabled = False
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330


@kopf.on.create(GROUP, VERSION, PLURAL)
def created(patch: kopf.Patch, **_: Any) -> None:
    patch.status["done"] = True


def main() -> None:
    namespace = sys.argv[1]
    kopf.configure(verbose=False, log_format=kopf.LogFormat.PLAIN)
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    print("kopf baseline starting", flush=True)
    kopf.run(standalone=True, namespaces=[namespace], clusterwide=False)


if __name__ == "__main__":
    main()
