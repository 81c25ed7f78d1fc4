"""Print a TCP port that is free on this machine now (the kernel's choice for a socket bound to port 0).

``scripts/stage_common.sh`` uses it for ``accelerate launch --main_process_port`` on one node, so that two
trainings started side by side do not both take accelerate's fixed default and fail with "address already in
use". The port is released before the launcher binds it; another process could take it in between, which the
kernel's ephemeral-port rotation makes unlikely.

    python -m steca.training.free_port
"""
from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that no socket holds at the moment of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def main() -> int:
    print(free_port())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
