"""``brainbot serve``: the chat service.

* ``app.py``: the endpoints, ownership, limits, errors answered by branch;
* ``auth.py``: who a user is (signed identity tokens, PyJWT);
* ``throttle.py``: rate limits per identity and per address (``limits``);
* ``inputs.py``: what a client may send (JSON bodies, sizes, text);
* ``transport.py``: uvicorn with deadlines, a connection limit and quiet accept errors.
"""

from brainbot.service.app import ChatService, ServiceLimits
from brainbot.service.auth import Identity, IdentityVerifier
from brainbot.service.throttle import Throttle
from brainbot.serving.transport import serve

__all__ = ["ChatService", "Identity", "IdentityVerifier", "ServiceLimits", "Throttle", "serve"]
