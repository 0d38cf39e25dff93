"""The agent's last config from control, kept on disk so that an agent restarted while control is down
still serves its tunnels (control carries no user traffic and may be away; the gateways may not be).

The file holds the config_update frame as control sent it, decoded again with the same checks on load;
written 0600 (it names the agent's tunnels, targets and gateways) and replaced atomically, so a crash
mid-write leaves the previous copy. A copy that cannot be read is ignored with a warning: control's next
config replaces it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from kakuremichi import protocol
from kakuremichi.logs import log
from kakuremichi.protocol import AgentConfig

logger = logging.getLogger("kakuremichi.agent")


class ConfigCache:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> AgentConfig | None:
        """The saved config, or None when there is none or it cannot be used."""
        try:
            frame = self.path.read_text()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            log(logger, logging.WARNING, "saved config unreadable, waiting for control's", path=str(self.path),
                error=str(exc))
            return None
        try:
            message = protocol.decode(frame)
        except protocol.ProtocolError as exc:
            log(logger, logging.WARNING, "saved config invalid, waiting for control's", path=str(self.path),
                error=str(exc))
            return None
        if not isinstance(message, protocol.ConfigUpdate) or not isinstance(message.config, AgentConfig):
            log(logger, logging.WARNING, "saved config is not an agent's, waiting for control's", path=str(self.path))
            return None
        return message.config

    def save(self, config: AgentConfig) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = self.path.with_name(self.path.name + ".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(protocol.ConfigUpdate(config).to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, self.path)
