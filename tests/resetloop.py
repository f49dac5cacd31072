"""The script the kernel and container tiers run inside a namespace to make
resets: up to N connects to a closed port on its loopback, each answered by
a reset, for at most S seconds (bounded in count and time); it prints how
many it made. Run as `python -c CONNECT_MANY N S`."""

import textwrap

CONNECT_MANY = textwrap.dedent("""
    import socket, sys, time
    n, deadline, done = int(sys.argv[1]), time.monotonic() + float(sys.argv[2]), 0
    while done < n and time.monotonic() < deadline:
        s = socket.socket()
        try:
            s.connect(("127.0.0.1", 9))
        except ConnectionRefusedError:
            pass
        s.close()
        done += 1
    print(done)
""")
