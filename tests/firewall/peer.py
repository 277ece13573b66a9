"""A tiny TCP/UDP peer the network-namespace tests run on either end.

``serve PROTO HOST PORT``: answer every TCP connection or UDP datagram with
``ok``; prints ``ready`` once bound, so the fixture waits on that line instead
of sleeping. ``connect PROTO HOST PORT TIMEOUT``: exit 0 when ``ok`` came back,
1 otherwise (a dropped packet shows up as a timeout).
"""

import socket
import sys


def serve(proto: str, host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if proto == "tcp":
        server = socket.socket(family, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((host, port))
        server.listen()
        print("ready", flush=True)
        while True:
            conn, _ = server.accept()
            with conn:
                conn.sendall(b"ok")
    else:
        server = socket.socket(family, socket.SOCK_DGRAM)
        server.bind((host, port))
        print("ready", flush=True)
        while True:
            _, peer = server.recvfrom(512)
            server.sendto(b"ok", peer)


def connect(proto: str, host: str, port: int, timeout: float) -> int:
    try:
        if proto == "tcp":
            with socket.create_connection((host, port), timeout=timeout) as conn:
                reply = conn.recv(2)
        else:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as conn:
                conn.settimeout(timeout)
                conn.sendto(b"hi", (host, port))
                reply = conn.recv(2)
    except OSError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0 if reply == b"ok" else 1


if __name__ == "__main__":
    mode, proto, host, port = sys.argv[1:5]
    if mode == "serve":
        serve(proto, host, int(port))
    else:
        sys.exit(connect(proto, host, int(port), float(sys.argv[5])))
