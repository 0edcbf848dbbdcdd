"""
Sender authentication for received mail: SPF, DKIM, DMARC, ARC and the
C{Authentication-Results} header. See L{AuthVerifier}.
"""

from ._results import ARCVerdict, AuthResults, DKIMVerdict, DMARCVerdict, SPFVerdict
from ._verify import AuthVerifier

__all__ = ["ARCVerdict", "AuthResults", "AuthVerifier", "DKIMVerdict", "DMARCVerdict", "SPFVerdict"]
