"""Ray placement of fedsim's parties: thin shells, no protocol logic.

`RayBackend` implements `fedsim.protocol.backend.Backend` with one long-lived actor per party:
clients, the aggregator and the key holders. Every decision lives in `fedsim`; this
package only chooses names, resources, thread limits and placement.
"""

from actors.backend import RayBackend, actor_name, connect
from actors.placement import check_capacity

__all__ = ["RayBackend", "actor_name", "check_capacity", "connect"]
