"""Protocol constants, exactly as the whitepaper (§6.1) and wireguard-go define them."""

REKEY_AFTER_MESSAGES = 1 << 60
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1
REKEY_AFTER_TIME = 120.0
REJECT_AFTER_TIME = 180.0
REKEY_ATTEMPT_TIME = 90.0
REKEY_TIMEOUT = 5.0
REKEY_TIMEOUT_JITTER_MAX = 0.334
MAX_TIMER_HANDSHAKES = int(REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)
KEEPALIVE_TIMEOUT = 10.0
HANDSHAKE_INITIATION_RATE = 1 / 50  # an initiation from a peer faster than this is a flood
ZERO_KEYS_AFTER = 3 * REJECT_AFTER_TIME
MAX_STAGED_PACKETS = 128
DEFAULT_MTU = 1420
UNDER_LOAD_HOLD = 1.0  # stay "under load" this long after the last overload sign
