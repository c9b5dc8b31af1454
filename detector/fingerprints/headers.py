"""Our header-order fingerprint (licence-clean; not JA4H, whose FoxIO licence forbids
use in products that are sold).

Format: `hv1_<count:02d><case>_<hash12>`. `count` is the number of header names,
`case` how the names were written (`l` all lower-case as HTTP/2 sends them, `t`
Title-Case as most HTTP/1.1 libraries send them, `m` mixed), and `hash12` the first
12 hex digits of SHA-256 over the lower-cased names in the order received, joined by
`,`. Values are left out, so the fingerprint names the client's stack, not the user;
the order is kept because HTTP libraries each emit their own order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from detector.cache import bounded_cache


@bounded_cache(8 * 2**20, 16 * 1024)  # by bytes: names come from requests
def names_fingerprint(names: tuple[str, ...]) -> str:
    """The fingerprint of a sequence of header names as received."""
    if all(n == n.lower() for n in names):
        case = "l"
    elif all(n == "-".join(p[:1].upper() + p[1:].lower() for p in n.split("-")) for n in names):
        case = "t"
    else:
        case = "m"
    digest = hashlib.sha256(",".join(n.lower() for n in names).encode()).hexdigest()[:12]
    return f"hv1_{min(len(names), 99):02d}{case}_{digest}"


def header_order_fingerprint(headers: Sequence[tuple[str, str]]) -> str:
    return names_fingerprint(tuple(name for name, _ in headers))
