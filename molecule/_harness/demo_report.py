#!/usr/bin/env python3
"""The end of `make demo`: say what runs where and which URL to open."""

import ssl
import urllib.error
import urllib.request

URL = "https://127.0.0.1:8443/"


def probe(url):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the demo's certificate is from its own test CA
    try:
        with urllib.request.urlopen(url, timeout=5, context=ctx) as resp:
            return f"HTTP {resp.status}"
    except urllib.error.HTTPError as err:
        return f"HTTP {err.code}"
    except OSError as err:
        return f"no answer ({err.__class__.__name__})"


def main():
    print("\nThe demo is up: container multinotes-demo (groups web, worker, scheduler, redis, db),")
    print("converged by `ansible-playbook -i inventories/local site.yml`.")
    print(f"Open: {URL}   [{probe(URL)}]")
    print("Remove it with: make demo-down")


if __name__ == "__main__":
    main()
