"""CPU per verification of one access token, as introspection and userinfo verify it
(``tokens.access_claims``: issuer, ``typ: at+jwt``, expiry left to the caller).

    .venv/bin/python bench/verify_cost.py -n 20000

"uncached": the signature checked on every call (the cache disabled); "cached": the same
token again, as a resource server introspecting one token on every request sends it.
CPU time (time.process_time), the best of --repeat runs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import timeit
from datetime import UTC, datetime, timedelta

from idp.keys import KeyStore
from idp.signing import Signer

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
ISSUER = "https://id.example.test"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20000, help="verifications per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best is printed")
    args = parser.parse_args()

    directory = tempfile.mkdtemp() + "/keys"
    KeyStore(directory, timedelta(hours=2)).ensure(NOW)
    ts = int(NOW.timestamp())
    claims = {"iss": ISSUER, "sub": "u" * 22, "aud": "c" * 22, "client_id": "c" * 22,
              "scope": "openid profile email", "jti": "j" * 22, "iat": ts, "nbf": ts,
              "exp": ts + 600, "fam": "f" * 22, "sid": "s" * 22, "auth_time": ts - 60}
    for cache in (0, 4096):
        signer = Signer(KeyStore(directory, timedelta(hours=2)), verified_cache_size=cache)
        for alg in ("ES256", "RS256"):
            token = signer.sign(claims, alg=alg, typ="at+jwt", now=NOW)

            def one(token=token, signer=signer):
                return signer.verify(token, issuer=ISSUER, now=NOW, typ="at+jwt", verify_exp=False)

            assert one()["fam"] == claims["fam"]
            best = min(timeit.repeat(one, number=args.n, repeat=args.repeat, timer=time.process_time))
            print(f"{alg} {'cached' if cache else 'uncached'}: {args.n} verifications "
                  f"{best:.3f} s CPU, {best / args.n * 1e6:.1f} us each")


if __name__ == "__main__":
    main()
