#!/usr/bin/env python3
"""The images' HEALTHCHECK: healthy when the gateway answers /echo.

/echo is answered by a Python filter (the echoListener's hijack reply), so
this fails when nginx is down and also when no Python worker serves: the
request then takes the fallback and gets a 404 without the echo header.

    healthcheck.py [URL]      exit 0 healthy, 1 not
"""

import sys
import urllib.request

URL = "http://127.0.0.1:2990/echo"


def main(argv):
    url = argv[1] if len(argv) > 1 else URL
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            if response.headers.get("x-mosn-echo") == "1":
                return 0
            print(f"{url}: no x-mosn-echo header", file=sys.stderr)
    except OSError as e:  # URLError and HTTPError are OSErrors
        print(f"{url}: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
