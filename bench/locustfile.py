"""Locust users for the soak test of the worked example (bench/soak_bench.py).

Every response is checked against what the example promises, so a
misrouted request (for instance one that took the fallback and went round
robin) counts as a locust failure, not just a slow one:

    uid 1..100 -> site s1 (3450 or 3451)     uid 101..200 -> site s2 (3452)
    any other integer -> site s3 (3453)      no uid / not a number -> any site
    /echo -> the echoListener's hijack reply
    /slow -> a loopback upstream answering after a delay, with the UNIT
             metadata the filters set (only where soak_bench added that
             location)

Run it through bench/soak_bench.py; on its own:

    locust -f bench/locustfile.py --headless -u 20 -r 5 -t 30s \
        --host http://127.0.0.1:2990 [--soak-slow-path ""]
"""

import random
import re

from locust import FastHttpUser, constant_pacing, events, task

SITE = re.compile(r"site (s[123]) from (345[0-3])")
PORTS = {"s1": {"3450", "3451"}, "s2": {"3452"}, "s3": {"3453"}}
ECHO_BODY = "hello from echo\n"

# uid values by the site they must reach; edges of every range included
UIDS = {
    "s1": ["1", "2", "50", "99", "100", "+7", "007"],
    "s2": ["101", "150", "199", "200"],
    "s3": ["0", "201", "-1", "-150", "1000", "99999999999"],
}
# headers the UNIT driver cannot use: round robin over every site
NOT_NUMBERS = ["abc", "1.5", "12abc", "0x10", "1e3", "-", "uid", "1 2"]


@events.init_command_line_parser.add_listener
def _options(parser):
    parser.add_argument(
        "--soak-pacing",
        type=float,
        default=0.05,
        help="seconds between the starts of one user's "
        "requests (bounds the request rate)",
    )
    parser.add_argument(
        "--soak-slow-path",
        default="/slow",
        help="path of the slow upstream, empty for none",
    )


def answer(response):
    """What came back, for a failure message: status and body, or the
    client's error (a timeout, a reset) when there was no status."""
    if not response.status_code:
        return repr(response.error)
    return f"{response.status_code} {(response.text or '')[:80]!r}"


def check_site(response, site):
    """The body names a demo site (site, or any site when site is None)."""
    text = response.text or ""
    match = SITE.fullmatch(text)
    if response.status_code != 200 or not match:
        response.failure(answer(response))
    elif site is not None and match.group(1) != site:
        response.failure(f"wanted {site}, got {text!r}")
    elif match.group(2) not in PORTS[match.group(1)]:
        response.failure(f"{match.group(1)} from the wrong port: {text!r}")
    else:
        response.success()


class ExampleUser(FastHttpUser):
    # a request the gateway leaves hanging must fail, not just wait for
    # the end of the run (the replies here take 100 ms at most)
    connection_timeout = 5.0
    network_timeout = 5.0

    def on_start(self):
        options = self.environment.parsed_options
        # the pacing bounds the load: users x (1 / pacing) requests a second
        self._pace = constant_pacing(options.soak_pacing if options else 0.05)
        self.slow_path = options.soak_slow_path if options else "/slow"

    def wait_time(self):
        return self._pace(self)

    def _routed(self, site, name):
        uid = random.choice(UIDS[site])
        with self.client.get(
            "/", headers={"uid": uid}, name=name, catch_response=True
        ) as response:
            check_site(response, site)

    @task(4)
    def uid_s1(self):
        self._routed("s1", "/ uid 1..100")

    @task(3)
    def uid_s2(self):
        self._routed("s2", "/ uid 101..200")

    @task(3)
    def uid_s3(self):
        self._routed("s3", "/ uid other integer")

    @task(2)
    def no_uid(self):
        with self.client.get(
            "/", name="/ no uid", catch_response=True
        ) as response:
            check_site(response, None)

    @task(2)
    def uid_not_a_number(self):
        headers = {"uid": random.choice(NOT_NUMBERS)}
        with self.client.get(
            "/",
            headers=headers,
            name="/ uid not a number",
            catch_response=True,
        ) as response:
            check_site(response, None)

    @task(2)
    def echo(self):
        with self.client.get(
            "/echo", name="/echo", catch_response=True
        ) as response:
            if (
                response.status_code != 200
                or response.text != ECHO_BODY
                or response.headers.get("x-mosn-echo") != "1"
            ):
                response.failure(answer(response))
            else:
                response.success()

    @task(2)
    def slow(self):
        if not self.slow_path:
            return
        site = random.choice(["s1", "s2", "s3", None])
        uid = random.choice(UIDS[site]) if site else None
        headers = {"uid": uid} if uid else {}
        with self.client.get(
            self.slow_path, headers=headers, name="/slow", catch_response=True
        ) as response:
            # the slow upstream echoes the metadata the filters set
            want = f"slow unit={site or ''}"
            if response.status_code != 200 or response.text != want:
                response.failure(f"wanted {want!r}, got {answer(response)}")
            else:
                response.success()
