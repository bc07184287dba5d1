"""A small closed-loop load generator: C threads, each with its own keep-alive
connection, send N requests in total and record each latency.

Usage: load.py URL IMAGE CONCURRENCY REQUESTS [WARMUP]
Prints one JSON object: p50_ms, p99_ms, mean_ms, rps, errors, top1.
"""

import http.client
import json
import socket
import sys
import threading
import time
import urllib.parse


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def main(argv):
    url, image, conc, total = argv[1], argv[2], int(argv[3]), int(argv[4])
    warmup = int(argv[5]) if len(argv) > 5 else 5
    u = urllib.parse.urlsplit(url)
    with open(image, "rb") as f:
        body = f.read()
    headers = {"Content-Type": "image/png", "Content-Length": str(len(body))}

    def connect():
        # TCP_NODELAY, as load tools (wrk, hey) and Go's and Rust's HTTP clients set it:
        # http.client sends a large body after the headers in a second write, and Nagle's
        # algorithm would hold its tail until the server's delayed ACK (~40 ms).
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        c.connect()
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return c

    def request(conn):
        conn.request("POST", u.path or "/", body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, data

    conn = connect()
    top1 = None
    for _ in range(warmup):
        status, data = request(conn)
        if status != 200:
            sys.exit(f"warm-up request failed: {status} {data[:200]!r}")
        top1 = json.loads(data)["predictions"][0]["label"]
    conn.close()

    latencies, errors = [], [0]
    lock = threading.Lock()
    remaining = [total]

    def worker():
        c = connect()
        while True:
            with lock:
                if remaining[0] == 0:
                    break
                remaining[0] -= 1
            t0 = time.perf_counter()
            try:
                status, _ = request(c)
            except OSError:
                status = 0
                c.close()
                c = connect()
            dt = (time.perf_counter() - t0) * 1000
            with lock:
                if status == 200:
                    latencies.append(dt)
                else:
                    errors[0] += 1
        c.close()

    threads = [threading.Thread(target=worker) for _ in range(conc)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    lat = sorted(latencies)
    print(
        json.dumps(
            {
                "concurrency": conc,
                "requests": total,
                "p50_ms": round(percentile(lat, 50), 1),
                "p99_ms": round(percentile(lat, 99), 1),
                "mean_ms": round(sum(lat) / len(lat), 1) if lat else None,
                "rps": round(len(lat) / elapsed, 2),
                "errors": errors[0],
                "top1": top1,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv)
