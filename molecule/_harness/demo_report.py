#!/usr/bin/env python3
"""The end of `make demo`: say what runs where and which URL to open."""

import subprocess

NAME, PORT = "multinotes.localhost", 8443
URL = f"https://{NAME}:{PORT}/"


def probe():
    # *.localhost is loopback; --resolve makes sure of it and sends the right SNI name.
    # -k: the demo serves nginx's self-signed bootstrap certificate.
    result = subprocess.run(
        ["curl", "-sk", "--max-time", "5", "--resolve", f"{NAME}:{PORT}:127.0.0.1",
         "-o", "/dev/null", "-w", "%{http_code}", URL], capture_output=True, text=True)
    code = result.stdout.strip()
    return f"HTTP {code}" if result.returncode == 0 and code != "000" else "no answer"


def main():
    print("\nThe demo is up: container multinotes-demo (groups web, worker, scheduler, redis, db),")
    print("converged by `ansible-playbook -i inventories/local site.yml`.")
    print(f"Open: {URL}   [{probe()}]")
    print("Remove it with: make demo-down")


if __name__ == "__main__":
    main()
